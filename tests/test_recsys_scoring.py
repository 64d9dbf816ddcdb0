"""On-device scoring: the serving forms, the least-squares fit, and export + verification in the real runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilec.errors import MobilecError
from mobilec.recsys import export_recommender
from mobilec.recsys.data import synthetic_interactions
from mobilec.recsys.lightgcn import build_lightgcn
from mobilec.recsys.meta import MetaEmbedLightGCN
from mobilec.recsys.scoring import ComposedModel, ServingForm, fit_composed


def _random_form(n_users: int = 7, n_items: int = 11, c: int = 5, t: int = 2, d: int = 4, seed: int = 0) -> ServingForm:
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(c, generator=g)[:t] for _ in range(n_users + n_items)])
    return ServingForm.composed(torch.randn(c, d, generator=g), index, torch.randn(n_users + n_items, t, generator=g), n_users)


def test_composed_scorer_matches_dense_scores() -> None:
    form = _random_form()
    users, items = form.embeddings()
    scorer = form.scorer(k=4)
    for u in range(form.n_users):
        ids, vals = scorer(torch.tensor([u]))
        dense = users[u] @ items.T
        ref_vals, ref_ids = torch.topk(dense, 4)
        assert torch.equal(ids[0], ref_ids) and torch.allclose(vals[0], ref_vals, atol=1e-5)
        assert ids.dtype == torch.int64 and ids.shape == (1, 4) and vals.dtype == torch.float32


def test_composed_memory_is_codebook_plus_small_index_plus_fp16_weight() -> None:
    form = _random_form(n_users=7, n_items=11, c=5, t=2, d=4)
    assert form.index.dtype == torch.int8 and form.weight.dtype == torch.float16  # <= 256 rows: int8 (index - 128)
    assert form.memory() == {"codebook": 5 * 4 * 4, "index": 18 * 2 * 1, "weight": 18 * 2 * 2, "total": 80 + 36 + 72}
    assert form.indices().min() >= 0 and form.indices().max() < 5
    big = _random_form(n_users=7, n_items=11, c=300, t=2, d=4)
    assert big.index.dtype == torch.int16 and torch.equal(big.indices(), big.index.long())
    table = ServingForm.full_table(torch.zeros(7, 4), torch.zeros(11, 4))
    assert table.embedding_bytes() == 18 * 4 * 4


def test_fit_recovers_an_exactly_composed_matrix() -> None:
    form = _random_form(n_users=30, n_items=40, c=6, t=2, d=8, seed=3)
    h = torch.cat(form.embeddings())
    noisy_start = form.codebook + 0.3 * torch.randn_like(form.codebook)
    fit = fit_composed(h, noisy_start, 2, 30, support=form.indices(), reselect=False, iters=20)
    assert fit.fit["relative_error"] < 1e-2
    assert fit.fit["relative_error"] <= fit.fit["history"][0]


def test_k_out_of_range_is_an_error() -> None:
    with pytest.raises(MobilecError, match="K=12 over 11 items"):
        _random_form().scorer(k=12)


def test_serving_state_round_trips(tmp_path: Path) -> None:
    from mobilec.io import load_state_dict, save_state_dict_atomic

    form = _random_form()
    save_state_dict_atomic(form.state_dict(), tmp_path / "serving.pt")
    back = ServingForm.from_state_dict(load_state_dict(tmp_path / "serving.pt"))
    assert all(torch.equal(a, b) for a, b in zip(back.embeddings(), form.embeddings(), strict=True))


def test_composed_model_round_trips_to_its_form() -> None:
    form = _random_form()
    back = ComposedModel(form).to_form()
    assert torch.equal(back.index, form.index) and torch.equal(back.weight, form.weight)
    assert torch.equal(back.codebook, form.codebook)


@pytest.mark.slow
def test_export_both_runtimes_identical_topk_on_every_test_user(tmp_path: Path) -> None:
    data = synthetic_interactions(30, 40, n_groups=3, per_user=8, seed=2)
    meta = MetaEmbedLightGCN(data, dim=8, layers=1, c1=5, t=2, partition="spectral")
    out = export_recommender(meta, data, tmp_path, ("executorch", "tflite"), k=5)
    assert not out["failures"]
    by_target = {a["target"]: a for a in out["artifacts"]}
    assert set(by_target) == {"executorch", "tflite"}
    for art in by_target.values():
        v = art["verification"]
        assert v["passed"] and v["users"] == len(data.eval_users("test")) == v["identical_topk"]
        assert v["max_abs_score_error"] < 1e-4
        assert Path(art["path"]).stat().st_size == art["size_bytes"]
    et = {row["name"]: row for row in by_target["executorch"]["layers"]}
    assert et["item_index"]["stored"] == "int8" and et["item_weight"]["stored"] == "fp16"
    # the .tflite was verified after its internal tensor names were dropped; the stored dtypes were read before
    lite = by_target["tflite"]
    assert any("internal tensor names dropped" in n for n in lite["notes"])
    assert {row["name"]: row["stored"] for row in lite["layers"]}["codebook"] != "not found (merged into another constant)"
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=lite["path"])
    io_ids = {d["index"] for d in interp.get_input_details() + interp.get_output_details()}
    assert all(not d["name"] for d in interp.get_tensor_details() if d["index"] not in io_ids)
    assert by_target["executorch"]["delegation"]["delegated"] >= 1  # the codebook matmul runs in XNNPACK
    # the full-table shortcut exports too
    table = export_recommender(build_lightgcn(data, dim=8, layers=1), data, tmp_path / "table", ("executorch",), k=5)
    assert table["artifacts"][0]["verification"]["passed"]
    assert table["serving"]["kind"] == "table"


def test_rejected_artifact_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mobilec.recsys.scoring as scoring

    data = synthetic_interactions(12, 20, n_groups=2, per_user=6, seed=0)
    form = ServingForm.full_table(*build_lightgcn(data, dim=4, layers=1).final_embeddings())
    art_path = tmp_path / "model.pte"

    class FakeArtifact:
        target, path, size_bytes = "executorch", art_path, 3

        def to_dict(self):
            return {"target": self.target, "path": str(self.path), "size_bytes": 3}

    def fake_export(form_, out_dir, *, k, targets, stem):
        art_path.write_bytes(b"pte")
        return form_.scorer(k), [FakeArtifact()], []

    monkeypatch.setattr(scoring, "export_scoring", fake_export)
    monkeypatch.setattr(scoring, "verify_scoring", lambda art, module, users: {
        "passed": False, "mismatched_users": [1], "users": 4, "identical_topk": 3, "max_abs_score_error": 0.0})

    class M:
        serving = form

    out = export_recommender(M(), data, tmp_path, ("executorch",), k=3)
    assert not art_path.exists() and out["artifacts"][0]["status"].startswith("rejected")
    assert out["failures"][0]["target"] == "executorch"
    assert np.isfinite(form.embedding_bytes())


def test_omp_support_fits_closer_than_the_pinv_rule() -> None:
    form = _random_form(n_users=30, n_items=40, c=12, t=3, d=8, seed=4)
    h = torch.cat(form.embeddings())
    start = form.codebook + 0.05 * torch.randn_like(form.codebook)
    omp = fit_composed(h, start, 3, 30, select="omp", iters=4)
    pinv = fit_composed(h, start, 3, 30, select="pinv", iters=4)
    assert omp.fit["select"] == "omp" and omp.indices().shape == (70, 3)
    assert all(len(set(row.tolist())) == 3 for row in omp.indices())  # t distinct rows per entity
    assert omp.fit["relative_error"] < pinv.fit["relative_error"] and omp.fit["relative_error"] < 0.1
    with pytest.raises(MobilecError, match="unknown support rule"):
        fit_composed(h, start, 3, 30, select="lasso")
