"""Implicit-feedback interaction data: MovieLens-100k and user interaction files, split per user.

Every interaction in the file counts as a positive (implicit feedback: "the user rated the
item"); ``min_rating`` keeps only ratings at or above a threshold instead. Each user's
interactions are shuffled with a fixed seed and split into train / validation / test
(default 80 / 10 / 10 %, at least one validation and one test item per user).

>>> data = load_interactions("ml-100k")                       # doctest: +SKIP
>>> data.n_users, data.n_items, len(data.train)               # doctest: +SKIP
(943, 1682, 80...)
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import MobilecError

ML100K_SPEC = "ml-100k"
MIN_INTERACTIONS = 3  # one train, one validation and one test item per user


@dataclass
class InteractionData:
    """A user-item implicit-feedback data set with a fixed per-user split.

    ``train``/``valid``/``test`` are int64 arrays of shape (n, 2) holding dense ``[user, item]``
    indices (users ``0..n_users-1``, items ``0..n_items-1``); ``user_ids``/``item_ids`` map a
    dense index back to the id in the source file.

    >>> d = from_pairs([0, 0, 0, 1, 1, 1], [0, 1, 2, 1, 2, 3], name="tiny")
    >>> d.n_users, d.n_items, len(d.train) + len(d.valid) + len(d.test)
    (2, 4, 6)
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    positives: str = "all interactions"
    seed: int = 0
    source: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_entities(self) -> int:
        return self.n_users + self.n_items

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "valid", "test"):
            raise MobilecError(f"unknown split {name!r}", hint="use train, valid or test")
        return getattr(self, name)

    def user_items(self, split: str) -> list[np.ndarray]:
        """Per user, the sorted item indices of ``split``."""
        key = f"ui:{split}"
        if key not in self._cache:
            pairs = self.split(split)
            order = np.lexsort((pairs[:, 1], pairs[:, 0]))
            pairs = pairs[order]
            bounds = np.searchsorted(pairs[:, 0], np.arange(self.n_users + 1))
            self._cache[key] = [pairs[bounds[u] : bounds[u + 1], 1] for u in range(self.n_users)]
        return self._cache[key]

    def known_positives(self, split: str) -> list[np.ndarray]:
        """Items to exclude when ranking for ``split``: train for validation, train + validation for test."""
        if split == "valid":
            return self.user_items("train")
        if split == "test":
            tr, va = self.user_items("train"), self.user_items("valid")
            return [np.concatenate([a, b]) for a, b in zip(tr, va, strict=True)]
        raise MobilecError(f"cannot rank split {split!r}", hint="evaluate on valid or test")

    def eval_users(self, split: str) -> np.ndarray:
        """Users with at least one positive in ``split`` (the ones a metric averages over)."""
        return np.unique(self.split(split)[:, 0])

    def fingerprint(self) -> str:
        """A short hash of the split (cache key for trained models)."""
        h = hashlib.sha256()
        for arr in (self.train, self.valid, self.test):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(f"{self.n_users}:{self.n_items}".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "positives": self.positives,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train": len(self.train),
            "n_valid": len(self.valid),
            "n_test": len(self.test),
            "split_seed": self.seed,
            "split": "per-user random 80/10/10 (at least 1 validation and 1 test item per user)",
        }

    def subset(self, n_users: int, *, seed: int = 0) -> InteractionData:
        """The first-split interactions of ``n_users`` random users, re-indexed (a small slice for tests).

        Items none of the chosen users touch are dropped; the train/valid/test membership of
        every kept interaction is unchanged.
        """
        if not 0 < n_users <= self.n_users:
            raise MobilecError(f"subset of {n_users} users asked from {self.n_users}", hint=f"use 1..{self.n_users}")
        users = np.sort(np.random.default_rng(seed).choice(self.n_users, n_users, replace=False))
        umap = np.full(self.n_users, -1, dtype=np.int64)
        umap[users] = np.arange(n_users)
        parts = [p[umap[p[:, 0]] >= 0] for p in (self.train, self.valid, self.test)]
        items = np.unique(np.concatenate([p[:, 1] for p in parts]))
        imap = np.full(self.n_items, -1, dtype=np.int64)
        imap[items] = np.arange(len(items))
        re = [np.stack([umap[p[:, 0]], imap[p[:, 1]]], axis=1) for p in parts]
        return InteractionData(
            name=f"{self.name}[{n_users} users]",
            n_users=n_users,
            n_items=len(items),
            train=re[0],
            valid=re[1],
            test=re[2],
            user_ids=self.user_ids[users],
            item_ids=self.item_ids[items],
            positives=self.positives,
            seed=self.seed,
            source=self.source,
        )


# -- loading -----------------------------------------------------------------------------------
def load_interactions(
    spec: str,
    *,
    seed: int = 0,
    min_rating: float | None = None,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
) -> InteractionData:
    """Load ``"ml-100k"`` (from the installed RecBole package) or ``"interactions:PATH.tsv"``.

    A file holds one interaction per line: ``user item [rating] [timestamp]`` separated by
    tabs or spaces, ids non-negative integers; ``#`` comments, blank lines and one header
    line (e.g. RecBole's ``user_id:token ...``) are skipped. Every line has the same number
    of columns. Duplicated (user, item) pairs, bad ids or numbers, and users left with fewer
    than 3 interactions raise :class:`MobilecError` naming the line.
    """
    if not isinstance(spec, str) or not spec:
        raise MobilecError(f"invalid interaction data spec {spec!r}", hint="use ml-100k or interactions:PATH.tsv")
    if not (0 < valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
        raise MobilecError(
            f"valid_frac={valid_frac} and test_frac={test_frac} must lie in (0, 1) and sum below 1",
            hint="e.g. valid_frac=0.1, test_frac=0.1",
        )
    if spec == ML100K_SPEC:
        path = ml100k_path()
        name, source = "ml-100k", f"recbole/dataset_example/ml-100k/ml-100k.inter ({path})"
    elif spec.startswith("interactions:"):
        path = Path(spec.split(":", 1)[1]).expanduser()
        if not path.is_file():
            raise MobilecError(f"interaction file {path} does not exist", hint="pass --data interactions:PATH.tsv with an existing file")
        name, source = path.stem, str(path)
    else:
        raise MobilecError(f"unknown interaction data {spec!r}", hint="use ml-100k or interactions:PATH.tsv")
    rows = parse_interaction_file(path)
    positives = "all interactions"
    if min_rating is not None:
        if rows["rating"] is None:
            raise MobilecError(f"min_rating={min_rating} given but {path} has no rating column", hint="drop min_rating")
        keep = rows["rating"] >= min_rating
        rows = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in rows.items()}
        positives = f"rating >= {min_rating:g}"
    return _build(rows, name=name, source=source, positives=positives, seed=seed, valid_frac=valid_frac, test_frac=test_frac, path=path)


def ml100k_path() -> Path:
    """The MovieLens-100k interaction file shipped inside the RecBole wheel (never copied into the repo)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MobilecError(
            "MovieLens-100k needs the recbole package (its wheel ships ml-100k.inter)",
            hint="pip install --no-deps recbole",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        raise MobilecError(f"{path} is missing from the installed recbole package", hint="pip install --no-deps --force-reinstall recbole")
    return path


def parse_interaction_file(path: Path) -> dict[str, Any]:
    """Parse and validate an interaction file; returns raw ``user``/``item`` ids, ``rating``, ``line`` numbers."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MobilecError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})", hint="save it as UTF-8 TSV") from None
    except OSError as exc:
        raise MobilecError(f"cannot read {path}: {exc.strerror or exc}") from None
    users: list[int] = []
    items: list[int] = []
    ratings: list[float] = []
    lines: list[int] = []
    n_cols = None
    header_seen = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        cols = [c.strip() for c in cols]
        if n_cols is None and not header_seen and not _is_int(cols[0]) and "user" in cols[0].lower():
            header_seen = True  # a header such as "user_id:token\titem_id:token\trating:float"
            continue
        if not 2 <= len(cols) <= 4:
            raise MobilecError(
                f"{path} line {lineno}: {len(cols)} columns ({raw[:60]!r})",
                hint="each line must be: user item [rating] [timestamp], tab separated",
            )
        if n_cols is None:
            n_cols = len(cols)
        elif len(cols) != n_cols:
            raise MobilecError(
                f"{path} line {lineno}: {len(cols)} columns where earlier lines have {n_cols}",
                hint="give every line the same columns: user item [rating] [timestamp]",
            )
        for what, tok in (("user", cols[0]), ("item", cols[1])):
            if not _is_int(tok) or int(tok) < 0:
                raise MobilecError(
                    f"{path} line {lineno}: unknown {what} id {tok!r}",
                    hint=f"{what} ids must be non-negative integers",
                )
        if n_cols >= 3:
            r = _to_float(cols[2])
            if r is None:
                raise MobilecError(f"{path} line {lineno}: rating {cols[2]!r} is not a number", hint="the third column must be a number")
            ratings.append(r)
        if n_cols == 4 and _to_float(cols[3]) is None:
            raise MobilecError(f"{path} line {lineno}: timestamp {cols[3]!r} is not a number", hint="the fourth column must be a number")
        users.append(int(cols[0]))
        items.append(int(cols[1]))
        lines.append(lineno)
    if not users:
        raise MobilecError(f"{path} holds no interactions", hint="each line must be: user item [rating] [timestamp]")
    u = np.asarray(users, dtype=np.int64)
    i = np.asarray(items, dtype=np.int64)
    ln = np.asarray(lines, dtype=np.int64)
    _check_duplicates(path, u, i, ln)
    return {"user": u, "item": i, "rating": np.asarray(ratings) if ratings else None, "line": ln}


def _is_int(tok: str) -> bool:
    try:
        int(tok)
    except ValueError:
        return False
    return True


def _to_float(tok: str) -> float | None:
    try:
        value = float(tok)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _check_duplicates(path: Path, u: np.ndarray, i: np.ndarray, ln: np.ndarray) -> None:
    order = np.lexsort((ln, i, u))
    su, si = u[order], i[order]
    dup = np.flatnonzero((su[1:] == su[:-1]) & (si[1:] == si[:-1]))
    if len(dup):
        k = dup[0]
        first, second = ln[order][k], ln[order][k + 1]
        raise MobilecError(
            f"{path} line {second}: duplicate interaction user {su[k]} item {si[k]} (first on line {first})",
            hint="keep one line per (user, item) pair",
        )


def _build(
    rows: dict[str, Any],
    *,
    name: str,
    source: str,
    positives: str,
    seed: int,
    valid_frac: float,
    test_frac: float,
    path: Path | None = None,
) -> InteractionData:
    u, i, ln = rows["user"], rows["item"], rows["line"]
    if len(u) == 0:
        raise MobilecError(f"{name}: no interactions left ({positives})", hint="lower min_rating")
    user_ids, uidx = np.unique(u, return_inverse=True)
    item_ids, iidx = np.unique(i, return_inverse=True)
    counts = np.bincount(uidx, minlength=len(user_ids))
    few = np.flatnonzero(counts < MIN_INTERACTIONS)
    if len(few):
        bad = few[0]
        first_line = ln[np.flatnonzero(uidx == bad)[0]]
        where = f"{path} line {first_line}" if path is not None else f"{name} interaction {first_line}"
        raise MobilecError(
            f"{where}: user {user_ids[bad]} has only {counts[bad]} interaction(s) ({positives}); "
            f"{len(few)} user(s) have fewer than {MIN_INTERACTIONS}",
            hint=f"every user needs at least {MIN_INTERACTIONS} interactions (train, validation, test): drop such users from the file",
        )
    train, valid, test = split_per_user(uidx, iidx, len(user_ids), seed=seed, valid_frac=valid_frac, test_frac=test_frac)
    return InteractionData(
        name=name,
        n_users=len(user_ids),
        n_items=len(item_ids),
        train=train,
        valid=valid,
        test=test,
        user_ids=user_ids,
        item_ids=item_ids,
        positives=positives,
        seed=seed,
        source=source,
    )


def split_per_user(
    users: np.ndarray, items: np.ndarray, n_users: int, *, seed: int, valid_frac: float = 0.1, test_frac: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle each user's interactions with ``seed`` and cut them into train / valid / test pairs."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((items, users))  # deterministic base order, independent of file order
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(n_users + 1))
    out: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    for user in range(n_users):
        its = items[bounds[user] : bounds[user + 1]].copy()
        rng.shuffle(its)
        n = len(its)
        n_test = max(1, round(n * test_frac))
        n_valid = max(1, round(n * valid_frac))
        n_train = n - n_test - n_valid
        if n_train < 1:  # only when n < 3, which the loader rejects; keep the invariant anyway
            raise MobilecError(f"user {user} has {n} interactions", hint=f"every user needs at least {MIN_INTERACTIONS}")
        for key, chunk in (("train", its[:n_train]), ("valid", its[n_train : n_train + n_valid]), ("test", its[n_train + n_valid :])):
            out[key].append(np.stack([np.full(len(chunk), user, dtype=np.int64), chunk.astype(np.int64)], axis=1))
    return tuple(np.concatenate(out[k]) for k in ("train", "valid", "test"))  # type: ignore[return-value]


def from_pairs(
    users: Any, items: Any, *, name: str = "synthetic", seed: int = 0, valid_frac: float = 0.1, test_frac: float = 0.1
) -> InteractionData:
    """Build a data set from in-memory (user, item) pairs (tests, synthetic graphs)."""
    u = np.asarray(users, dtype=np.int64)
    i = np.asarray(items, dtype=np.int64)
    if u.shape != i.shape or u.ndim != 1:
        raise MobilecError("users and items must be 1-D sequences of the same length")
    rows = {"user": u, "item": i, "rating": None, "line": np.arange(1, len(u) + 1)}
    _check_duplicates(Path(name), u, i, rows["line"])
    return _build(rows, name=name, source="in-memory pairs", positives="all interactions", seed=seed,
                  valid_frac=valid_frac, test_frac=test_frac)


def synthetic_interactions(
    n_users: int = 60, n_items: int = 80, *, n_groups: int = 4, per_user: int = 12, noise: float = 0.1, seed: int = 0
) -> InteractionData:
    """A small clustered interaction graph: users mostly pick items of their own group."""
    rng = np.random.default_rng(seed)
    user_group = rng.integers(0, n_groups, n_users)
    item_group = np.arange(n_items) % n_groups
    users, items = [], []
    for u in range(n_users):
        own = np.flatnonzero(item_group == user_group[u])
        n_noise = round(per_user * noise)
        chosen = set(rng.choice(own, min(per_user - n_noise, len(own)), replace=False).tolist())
        while len(chosen) < per_user:
            chosen.add(int(rng.integers(0, n_items)))
        users += [u] * len(chosen)
        items += sorted(chosen)
    return from_pairs(users, items, name=f"synthetic-{n_users}x{n_items}", seed=seed)


def cache_dir() -> Path:
    """Where trained reference models are cached between runs ($MOBILEC_CACHE or ~/.cache/mobilec)."""
    env = os.environ.get("MOBILEC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mobilec"
