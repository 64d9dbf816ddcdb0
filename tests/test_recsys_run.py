"""``mobilec export`` on interaction data: interactions:PATH.tsv, recipe passes, memory statement, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilec import api
from mobilec.errors import MobilecError
from mobilec.recsys.data import load_interactions, synthetic_interactions
from mobilec.recsys.lightgcn import BPRConfig, train_lightgcn

FAST = 'max_epochs = 2\neval_every = 2\npatience = 1\nlr = 0.01\nbatch_size = 256\nserve_fit_iters = 2\nrefresh_epochs = 2\n'


@pytest.fixture(scope="module")
def tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic interaction file with sparse raw ids (not 0..n-1) and a header."""
    data = synthetic_interactions(30, 60, n_groups=3, per_user=8, seed=2)
    pairs = np.concatenate([data.train, data.valid, data.test])
    path = tmp_path_factory.mktemp("inter") / "clicks.tsv"
    lines = ["user_id:token\titem_id:token"] + [f"{100 + 7 * u}\t{5000 + 3 * i}" for u, i in pairs]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def weights(tsv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = load_interactions(f"interactions:{tsv}")
    model, _ = train_lightgcn(data, dim=64, layers=3, cfg=BPRConfig(epochs=2, lr=1e-2, batch_size=256, eval_every=2))
    path = tmp_path_factory.mktemp("w") / "lightgcn.pt"
    torch.save(model.state_dict(), path)
    return path


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text('version = 1\n[export]\ntargets = ["executorch"]\n' + body)
    return path


def test_c2f_coarse_on_an_interaction_file_states_the_memory_in_bytes(tsv: Path, weights: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, '[[passes]]\ntype = "c2f_coarse"\nc1 = 8\nt = 2\npartition = "spectral"\nbudget_bytes = 3000\n'
                     + FAST)
    run = api.export(str(recipe), model="lightgcn", weights=weights, data=f"interactions:{tsv}", out=tmp_path / "run",
                     show_progress=False)
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert run.ok and rep["artifacts"][0]["status"] == "verified" and (tmp_path / "run" / "model.pte").is_file()
    v = rep["artifacts"][0]["verification"]
    assert v["identical_topk"] == v["users"] == 30
    full = (30 + 60) * 64 * 4
    notes = " ".join(rep["notes"])
    assert f"full table {full} bytes" in notes and "budget 3000 bytes" in notes and "no embedding table" in notes
    assert rep["passes"][0]["summary"]["served_embedding_bytes"] <= 3000
    assert 0.0 <= rep["accuracy"]["served recall@20"] <= 1.0


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ('[[passes]]\ntype = "c2f_coarse"\nc1 = 8\nbudget_bytes = 100000\n', r"budget_bytes = 100000 is not smaller than the full"),
        ('[[passes]]\ntype = "c2f_coarse"\nc1 = 500\n', r"c1 = 500 exceeds the 90"),
        ('[[passes]]\ntype = "c2f_coarse"\nc1 = 0\n', r"c1 = 0 must be at least 1"),
    ],
)
def test_bad_recipes_are_clear_errors(tsv: Path, weights: Path, tmp_path: Path, body: str, pattern: str) -> None:
    with pytest.raises(MobilecError, match=pattern):
        api.export(str(_recipe(tmp_path, body + 'partition = "spectral"\n')), model="lightgcn", weights=weights,
                   data=f"interactions:{tsv}", out=tmp_path / "run", show_progress=False)


def test_bad_files_and_weights_are_clear_errors(tsv: Path, weights: Path, tmp_path: Path) -> None:
    dup = tmp_path / "dup.tsv"
    dup.write_text(tsv.read_text() + tsv.read_text().splitlines()[1] + "\n")
    with pytest.raises(MobilecError, match=r"dup.tsv line \d+: duplicate interaction"):
        api.export("c2f", model="lightgcn", weights=weights, data=f"interactions:{dup}", out=tmp_path / "a", show_progress=False)
    bad_cols = tmp_path / "cols.tsv"
    bad_cols.write_text("1\t2\n1\t3\t4\t5\t6\n")
    with pytest.raises(MobilecError, match=r"cols.tsv line 2: 5 columns"):
        api.export("c2f", model="lightgcn", data=f"interactions:{bad_cols}", out=tmp_path / "b", show_progress=False)
    wrong = tmp_path / "wrong.pt"
    torch.save({"embedding": torch.zeros(3, 64)}, wrong)
    with pytest.raises(MobilecError, match="not a LightGCN state_dict for this data"):
        api.export("c2f", model="lightgcn", weights=wrong, data=f"interactions:{tsv}", out=tmp_path / "c", show_progress=False)
    with pytest.raises(MobilecError, match="needs interaction data"):
        api.export("c2f", model="lightgcn", data="fashion-mnist", out=tmp_path / "d", show_progress=False)
    with pytest.raises(MobilecError, match="executorch and tflite, not onnx"):
        api.export("c2f", model="lightgcn", weights=weights, data=f"interactions:{tsv}", targets="onnx", out=tmp_path / "e",
                   show_progress=False)


def test_c2f_fine_stage_report_states_tau_nonzeros_and_bytes(tsv: Path, weights: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, '[[passes]]\ntype = "c2f_coarse"\nc1 = 8\nt = 2\npartition = "spectral"\nrefresh = false\n' + FAST
                     + '[[passes]]\ntype = "c2f_fine"\nc2 = 4\nk2 = 2\nn_components = 3\npartition = "spectral"\n'
                       'tau_relative = true\ntau_grid = [0.0, 0.5]\n' + FAST.replace("refresh_epochs = 2\n", ""))
    run = api.export(str(recipe), model="lightgcn", weights=weights, data=f"interactions:{tsv}", out=tmp_path / "run",
                     show_progress=False)
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    s = rep["passes"][1]["summary"]
    assert run.ok and s["fine_nonzeros"] > 0 and len(s["tau_trials"]) == 2
    note = next(n for n in rep["notes"] if n.startswith("fine stage:"))
    assert f"keeps {s['fine_nonzeros']} non-zeros ({s['fine_codebook_bytes']} bytes as CSR)" in note
    assert "picked on validation Recall@20 from 2 trials" in note and f"{s['trained_embedding_bytes']} bytes" in note
    assert "fine_nonzeros" in (tmp_path / "run" / "report.md").read_text()
