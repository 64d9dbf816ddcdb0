"""Interaction data: parsing, validation errors naming the line, the seeded per-user split, ML-100k."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mobilec.errors import MobilecError
from mobilec.recsys.data import from_pairs, load_interactions, synthetic_interactions

HAS_RECBOLE = importlib.util.find_spec("recbole") is not None


def _write(tmp_path: Path, text: str, name: str = "inter.tsv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"interactions:{path}"


def _rows(n_users: int = 4, per_user: int = 5, cols: int = 4) -> list[str]:
    lines = []
    for u in range(n_users):
        for j in range(per_user):
            fields = [str(10 + u), str(100 + (u + j) % max(9, per_user)), str(1 + j % 5), str(880000000 + j)][:cols]
            lines.append("\t".join(fields))
    return lines


@pytest.mark.parametrize("cols", [2, 3, 4])
def test_file_with_header_and_comments_loads(tmp_path: Path, cols: int) -> None:
    header = "\t".join(["user_id:token", "item_id:token", "rating:float", "timestamp:float"][:cols])
    spec = _write(tmp_path, "\n".join([header, "# a comment", "", *_rows(cols=cols)]) + "\n")
    data = load_interactions(spec)
    assert (data.n_users, data.n_items) == (4, 8)
    assert list(data.user_ids) == [10, 11, 12, 13]
    assert len(data.train) + len(data.valid) + len(data.test) == 20


def test_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    spec = _write(tmp_path, "\n".join(_rows(n_users=6, per_user=10)) + "\n")
    a, b, c = load_interactions(spec, seed=3), load_interactions(spec, seed=3), load_interactions(spec, seed=4)
    assert all(np.array_equal(getattr(a, s), getattr(b, s)) for s in ("train", "valid", "test"))
    assert not np.array_equal(a.test, c.test)
    keys = [set(map(tuple, getattr(a, s).tolist())) for s in ("train", "valid", "test")]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert sum(map(len, keys)) == 60
    for split in ("train", "valid", "test"):  # every user in every split; 10 -> 8/1/1
        assert np.array_equal(np.bincount(getattr(a, split)[:, 0], minlength=6), np.full(6, {"train": 8}.get(split, 1)))


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        (["1\t2\t3\t4\t5"], r"line 1: 5 columns"),
        (["1\t2\t5", "1\t3"], r"line 2: 2 columns where earlier lines have 3"),
        (["1\tabc\t5"], r"line 1: unknown item id 'abc'"),
        (["-4\t2"], r"line 1: unknown user id '-4'"),
        (["1\t2\tfive"], r"line 1: rating 'five' is not a number"),
        (["1\t2\t5\tyesterday"], r"line 1: timestamp 'yesterday' is not a number"),
        (["1\t2", "1\t3", "1\t4", "1\t2"], r"line 4: duplicate interaction user 1 item 2 \(first on line 1\)"),
        (["1\t2", "1\t3", "1\t4", "2\t2", "2\t5"], r"line 4: user 2 has only 2 interaction"),
    ],
)
def test_bad_files_name_the_line(tmp_path: Path, lines: list[str], pattern: str) -> None:
    spec = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(MobilecError, match=pattern):
        load_interactions(spec)


def test_empty_missing_and_unknown_specs(tmp_path: Path) -> None:
    with pytest.raises(MobilecError, match="holds no interactions"):
        load_interactions(_write(tmp_path, "# nothing\n"))
    with pytest.raises(MobilecError, match="does not exist"):
        load_interactions(f"interactions:{tmp_path / 'nope.tsv'}")
    with pytest.raises(MobilecError, match="unknown interaction data 'movielens'"):
        load_interactions("movielens")
    with pytest.raises(MobilecError, match=r"min_rating=4 given but .* has no rating column"):
        load_interactions(_write(tmp_path, "\n".join(_rows(cols=2)) + "\n", "two.tsv"), min_rating=4)


def test_min_rating_filter_can_empty_a_user(tmp_path: Path) -> None:
    lines = ["1\t1\t5", "1\t2\t5", "1\t3\t4", "2\t1\t1", "2\t2\t5", "2\t4\t2"]
    spec = _write(tmp_path, "\n".join(lines) + "\n")
    assert load_interactions(spec).n_users == 2
    with pytest.raises(MobilecError, match=r"line 5: user 2 has only 1 interaction\(s\) \(rating >= 4\)"):
        load_interactions(spec, min_rating=4)


def test_subset_keeps_split_membership() -> None:
    data = synthetic_interactions(40, 50)
    sub = data.subset(10, seed=1)
    assert sub.n_users == 10 and sub.n_items <= 50
    for split in ("train", "valid", "test"):
        orig = {(int(data.user_ids[u]), int(data.item_ids[i])) for u, i in getattr(data, split)}
        mine = {(int(sub.user_ids[u]), int(sub.item_ids[i])) for u, i in getattr(sub, split)}
        assert mine <= orig and mine


def test_known_positives_for_ranking() -> None:
    data = from_pairs([0] * 5 + [1] * 5, [0, 1, 2, 3, 4, 1, 2, 3, 4, 5])
    for u in range(2):
        tr, va = set(data.user_items("train")[u]), set(data.user_items("valid")[u])
        assert set(data.known_positives("valid")[u]) == tr
        assert set(data.known_positives("test")[u]) == tr | va


@pytest.mark.skipif(not HAS_RECBOLE, reason="pip install --no-deps recbole for MovieLens-100k")
def test_movielens_100k_loads_with_every_interaction_positive() -> None:
    data = load_interactions("ml-100k")
    assert (data.n_users, data.n_items) == (943, 1682)
    assert len(data.train) + len(data.valid) + len(data.test) == 100_000
    assert data.positives == "all interactions"
    assert len(data.eval_users("test")) == 943


def test_missing_recbole_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a))
    with pytest.raises(MobilecError, match=r"pip install --no-deps recbole"):
        load_interactions("ml-100k")
