"""C2F meta-embeddings: assignment init, graph structure, refresh rules, fine stage, passes and their errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilec.context import Context
from mobilec.errors import MobilecError
from mobilec.passes.meta_embed import C2FCoarse, C2FFine, HashEmbed
from mobilec.recipe import Recipe
from mobilec.recsys.data import synthetic_interactions
from mobilec.recsys.lightgcn import build_lightgcn
from mobilec.recsys.meta import HashLightGCN, MetaEmbedLightGCN, partition_assignment, sparse_rows_matmul
from mobilec.recsys.partition import partition_graph
from mobilec.report import RunReport

FAST = {"max_epochs": 4, "eval_every": 2, "patience": 1, "lr": 1e-2, "batch_size": 256, "serve_fit_iters": 2}


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions(40, 60, n_groups=4, per_user=10, seed=1)


def _ctx(data, tmp_path: Path, teacher=None) -> Context:
    report = RunReport(recipe="test", model={"name": "lightgcn"}, data={"name": data.name})
    return Context(data=data, workdir=tmp_path, report=report, example_inputs=(torch.tensor([0]),), teacher=teacher,
                   show_progress=False)


@pytest.mark.parametrize("method", ["metis", "spectral"])
def test_partition_covers_every_cluster(data, method) -> None:
    parts = partition_graph(data, 7, method=method)
    assert parts.shape == (data.n_entities,)
    assert set(parts.tolist()) == set(range(7))


def test_partition_assignment_own_weight_and_distinct_columns() -> None:
    parts = np.array([0, 1, 2, 2, 4])
    idx, w = partition_assignment(parts, 5, 3, 0.6, seed=0)
    assert torch.equal(idx[:, 0], torch.as_tensor(parts))
    assert all(len(set(r)) == 3 for r in idx.tolist())
    assert torch.allclose(w[:, 0], torch.full((5,), 0.6)) and torch.allclose(w.sum(1), torch.ones(5))


def test_expanded_graph_blocks(data) -> None:
    m = MetaEmbedLightGCN(data, dim=8, layers=2, c1=5, t=2, partition="spectral")
    m.start_fine(data, c2=3, k2=2, n_components=4, partition="spectral")
    a = m.adj.to_dense()
    n, c1 = data.n_entities, 5
    assert torch.allclose(a, a.T, atol=1e-6)
    assert (a[n + c1 :, :n] == 0).all()  # fine nodes link only to coarse nodes
    assert (a[n + c1 :, n + c1 :] == 0).all() and (a[n : n + c1, n : n + c1] == 0).all()
    assert (a[n + c1 :, n : n + c1] > 0).any() and (a[:n, n : n + c1] > 0).any()
    # every entity links to exactly its t coarse nodes
    linked = (a[:n, n : n + c1] > 0).sum(1)
    assert (linked <= 2).all() and (linked >= 1).all()


def test_coarse_refresh_is_top_t_of_the_projection(data) -> None:
    m = MetaEmbedLightGCN(data, dim=8, layers=2, c1=6, t=2, partition="spectral")
    h_full, h_c, _ = m.propagated_states()
    proj = h_full @ torch.linalg.pinv(h_c)
    m.refresh_coarse_assignment()
    assert torch.equal(m.s1_index.sort(1).values, torch.topk(proj, 2, dim=1).indices.sort(1).values)
    assert torch.allclose(m.s1_weight.abs().sum(1), torch.ones(data.n_entities))  # rows rescaled to unit L1


def test_fine_stage_init_bridging_and_threshold(data) -> None:
    m = MetaEmbedLightGCN(data, dim=12, layers=1, c1=6, t=2, partition="spectral")
    m.start_fine(data, c2=4, k2=3, tau=0.05, gate=0.2, n_components=3, partition="spectral")
    assert not m.coarse.requires_grad and m.fine.requires_grad
    assert ((m.fine != 0).sum(1) <= 3).all()  # SparsePCA codes sit in n_components random dims
    sparse = m.sparse_fine()
    assert torch.all((sparse == 0) | (sparse.abs() == m.fine.abs() - 0.05))
    expect = 0.2 * sparse_rows_matmul(m.s2_index, m.s2_weight, sparse) + 0.8 * m.coarse
    assert torch.allclose(m.bridged_coarse(), expect)
    assert m.s2_index.shape == (6, 3)
    m.refresh_fine_assignment()
    assert m.s2_index.shape == (6, 3) and torch.all(m.s2_weight > 0)
    final, _ = m.forward_all()
    assert final.shape == (data.n_entities, 12) and torch.isfinite(final).all()
    mem = m.memory()
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"c1": 0}, r"codebook size c1 = 0 must be at least 1"), ({"c1": 10_000}, r"exceeds the 100"), ({"t": 9, "c1": 4}, r"t = 9")],
)
def test_bad_codebooks(data, kwargs, pattern) -> None:
    with pytest.raises(MobilecError, match=pattern):
        MetaEmbedLightGCN(data, dim=4, layers=1, partition="spectral", **{"c1": 4, "t": 2, **kwargs})


def test_coarse_then_fine_passes_record_memory_and_metrics(data, tmp_path: Path) -> None:
    ref = build_lightgcn(data, dim=8, layers=2)
    ctx = _ctx(data, tmp_path, teacher=ref)
    coarse = C2FCoarse(c1=6, partition="spectral", refresh_epochs=2, **FAST).apply(ref, ctx)
    fine = C2FFine(c2=4, n_components=3, partition="spectral", **FAST).apply(coarse, ctx)
    names = [p.name for p in ctx.report.passes]
    assert names == ["c2f_coarse", "c2f_fine"]
    s = ctx.report.passes[-1].summary
    assert s["served_embedding_bytes"] == fine.serving.embedding_bytes() < s["full_table_bytes"]
    assert s["full_table_bytes"] == data.n_entities * 8 * 4
    assert 0.0 <= s["recall@20"] <= 1.0 and "reference_recall@20" in s
    assert fine.serving.kind == "composed" and fine.serving.index.shape == (data.n_entities, 2)


def test_hash_pass(data, tmp_path: Path) -> None:
    ref = build_lightgcn(data, dim=8, layers=1)
    out = HashEmbed(c=6, **FAST).apply(ref, _ctx(data, tmp_path))
    assert isinstance(out, HashLightGCN)
    assert out.serving.index.shape == (data.n_entities, 2)


def test_budget_checks(data, tmp_path: Path) -> None:
    ref = build_lightgcn(data, dim=8, layers=1)
    full = data.n_entities * 8 * 4
    with pytest.raises(MobilecError, match=r"budget_bytes = .* is not smaller than the full embedding table"):
        C2FCoarse(c1=6, budget_bytes=full + 1, partition="spectral").apply(ref, _ctx(data, tmp_path))
    with pytest.raises(MobilecError, match=r"over budget_bytes = 100 .*lower c1"):
        C2FCoarse(c1=6, budget_bytes=100, partition="spectral").apply(ref, _ctx(data, tmp_path))
    with pytest.raises(ValueError, match="c1 = 0"):
        C2FCoarse(c1=0)


def test_passes_refuse_image_data_and_wrong_models(data, tmp_path: Path) -> None:
    ref = build_lightgcn(data, dim=8, layers=1)
    bad_ctx = _ctx(data, tmp_path)
    bad_ctx.data = object()
    with pytest.raises(MobilecError, match="needs interaction data"):
        C2FCoarse(c1=4).apply(ref, bad_ctx)
    with pytest.raises(MobilecError, match="run the c2f_coarse pass first"):
        C2FFine(c2=4).apply(ref, _ctx(data, tmp_path))
    with pytest.raises(MobilecError, match="compresses a LightGCN recommender"):
        C2FCoarse(c1=4).apply(torch.nn.Linear(2, 2), _ctx(data, tmp_path))


@pytest.mark.parametrize("name", ["c2f", "c2f-coarse", "lightgcn"])
def test_recipes_load(name) -> None:
    recipe = Recipe.load(name)
    kinds = [p.name for p in recipe.passes]
    assert kinds == {"c2f": ["c2f_coarse", "c2f_fine"], "c2f-coarse": ["c2f_coarse"], "lightgcn": []}[name]
    assert Recipe.from_dict(recipe.to_dict(), name=name, where="roundtrip").to_dict() == recipe.to_dict()


def test_warm_start_reproduces_the_reference_ranking(data) -> None:
    from mobilec.recsys.lightgcn import BPRConfig, train_lightgcn
    from mobilec.recsys.metrics import evaluate_embeddings

    ref, _ = train_lightgcn(data, dim=8, layers=1, cfg=BPRConfig(epochs=4, lr=3e-2, batch_size=512, eval_every=4))
    scratch = MetaEmbedLightGCN(data, dim=8, layers=1, c1=8, t=4, partition="spectral")
    warm = MetaEmbedLightGCN(data, dim=8, layers=1, c1=8, t=4, partition="spectral")
    info = warm.warm_start(ref.embedding)
    assert info["scale"] > 0 and float(warm.output_scale) == pytest.approx(info["scale"])
    assert torch.equal(warm.s1_index, scratch.s1_index)  # the partition support is kept
    r = {name: evaluate_embeddings(*m.final_embeddings(), data, "valid", ks=(20,))["recall@20"]
         for name, m in (("ref", ref), ("scratch", scratch), ("warm", warm))}
    assert r["warm"] > r["scratch"] and r["warm"] > 0.6 * r["ref"]
    hashed = HashLightGCN(data, dim=8, layers=1, c=8, t=2)
    assert hashed.warm_start(ref.embedding)["relative_error"] < 1.0


def test_movielens_slice_runs_the_c2f_recipe_passes(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("recbole") is None:
        pytest.skip("pip install --no-deps recbole for MovieLens-100k")
    from mobilec.recsys.data import load_interactions

    data = load_interactions("ml-100k").subset(40, seed=0)
    ref = build_lightgcn(data, dim=8, layers=1)
    ctx = _ctx(data, tmp_path, teacher=ref)
    recipe = Recipe.load("c2f")
    fast = {**FAST, "serve_tune_epochs": 2}
    coarse = dataclasses.replace(recipe.passes[0], c1=8, t=3, refresh_epochs=2, **fast)
    fine = dataclasses.replace(recipe.passes[1], c2=4, n_components=4, **fast)
    model = fine.apply(coarse.apply(ref, ctx), ctx)
    s = ctx.report.passes[-1].summary
    assert model.stage == "fine" and s["served_embedding_bytes"] < s["full_table_bytes"] / 3
    assert s["served_test"]["users"] == len(data.eval_users("test"))


def test_recipe_with_empty_codebook_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[passes]]\ntype = "c2f_coarse"\nc1 = 0\n')
    with pytest.raises(MobilecError, match=r"pass 'c2f_coarse'.*c1 = 0 must be at least 1"):
        Recipe.load(str(bad))
    bad.write_text('version = 1\n[[passes]]\ntype = "c2f_fine"\nc2 = 0\n')
    with pytest.raises(MobilecError, match=r"c2 = 0 must be at least 1"):
        Recipe.load(str(bad))


def test_omp_warm_start_refits_the_support_from_partition_centroids(data) -> None:
    from mobilec.recsys.lightgcn import BPRConfig, train_lightgcn

    ref, _ = train_lightgcn(data, dim=8, layers=1, cfg=BPRConfig(epochs=4, lr=3e-2, batch_size=512, eval_every=4))
    pinv = MetaEmbedLightGCN(data, dim=8, layers=1, c1=8, t=3, partition="spectral")
    omp = MetaEmbedLightGCN(data, dim=8, layers=1, c1=8, t=3, partition="spectral", select="omp")
    e_pinv, e_omp = pinv.warm_start(ref.embedding)["relative_error"], omp.warm_start(ref.embedding)["relative_error"]
    assert e_omp < e_pinv
    assert all(len(set(row.tolist())) == 3 for row in omp.s1_index)
    stats = omp.refresh_coarse_assignment()
    assert 0.0 <= stats["rows_changed"] <= 1.0 and omp.serving_form(data, iters=2).fit["select"] == "omp"
    with pytest.raises(MobilecError, match="unknown support rule"):
        MetaEmbedLightGCN(data, dim=8, layers=1, c1=8, t=3, partition="spectral", select="topk")
    with pytest.raises(ValueError, match="select"):
        C2FCoarse(select="topk")


def test_fine_init_is_nonzero_and_tau_follows_the_codebook_scale(data) -> None:
    """SparsePCA runs on RMS-normalised rows and a relative tau follows the init: no scale empties the fine codebook."""
    scales = {}
    for scale in (1e-3, 1.0, 1e3):
        m = MetaEmbedLightGCN(data, dim=12, layers=1, c1=6, t=2, partition="spectral")
        with torch.no_grad():
            m.coarse.mul_(scale)
        info = m.start_fine(data, c2=4, k2=2, tau=0.5, tau_relative=True, n_components=3, partition="spectral")
        values = m.fine.detach().abs()[m.fine.detach() != 0]
        assert info["init_nonzeros"] == values.numel() > 0
        assert info["init_scale"] == pytest.approx(float(np.median(values.numpy())), rel=1e-5)
        assert m.tau == pytest.approx(0.5 * info["init_scale"])
        assert 0 < info["nonzeros"] == m.fine_nonzeros() < info["init_nonzeros"]  # about half survive the threshold
        assert m.memory()["fine_codebook_sparse"] == m.fine_nonzeros() * 5 + (4 + 1) * 4
        scales[scale] = (info["init_scale"], info["nonzeros"])
    assert scales[1e3][0] == pytest.approx(1e6 * scales[1e-3][0], rel=1e-3)  # the init follows the codebook's scale
    assert scales[1e3][1] == scales[1.0][1] == scales[1e-3][1]  # and so does what the threshold keeps


def test_a_tau_that_zeroes_the_fine_codebook_is_an_error(data) -> None:
    m = MetaEmbedLightGCN(data, dim=12, layers=1, c1=6, t=2, partition="spectral")
    with pytest.raises(MobilecError, match=r"zeroes the whole fine codebook at init.*no-op"):
        m.start_fine(data, c2=4, k2=2, tau=1e6, n_components=3, partition="spectral")
    with pytest.raises(MobilecError, match=r"zeroes the whole fine codebook"):
        m.start_fine(data, c2=4, k2=2, tau=50.0, tau_relative=True, n_components=3, partition="spectral")
    with pytest.raises(MobilecError, match=r"SparsePCA .* zeroed every fine code"):
        m.start_fine(data, c2=4, k2=2, tau=0.0, n_components=3, partition="spectral", sparse_alpha=1e6)
    assert m.stage == "coarse" and m.fine is None  # a refused start leaves the coarse model as it was


def test_fine_pass_picks_tau_on_validation_and_restores_that_trial(data, tmp_path: Path) -> None:
    from mobilec.recsys.metrics import evaluate_embeddings

    ref = build_lightgcn(data, dim=8, layers=2)
    ctx = _ctx(data, tmp_path, teacher=ref)
    coarse = C2FCoarse(c1=6, partition="spectral", refresh=False, **FAST).apply(ref, ctx)
    fine = C2FFine(c2=4, k2=2, n_components=3, partition="spectral", tau_relative=True, tau_grid=(0.0, 0.5), **FAST).apply(coarse, ctx)
    s = ctx.report.passes[-1].summary
    trials = s["tau_trials"]
    assert [t["tau_given"] for t in trials] == [0.0, 0.5] and all(t["nonzeros"] > 0 for t in trials)
    best = max(trials, key=lambda t: t["best_valid"])
    assert fine.tau == pytest.approx(best["tau"]) and s["fine_nonzeros"] == fine.fine_nonzeros() == best["nonzeros"]
    valid = evaluate_embeddings(*fine.final_embeddings(), data, "valid")["recall@20"]
    assert valid == pytest.approx(best["best_valid"]) == pytest.approx(s["valid_recall_fine"])
    assert s["fine_codebook_bytes"] == s["fine_nonzeros"] * 5 + 5 * 4
    assert s["trained_embedding_bytes"] == s["memory"]["total"] > s["served_embedding_bytes"]


def test_fine_pass_refuses_to_end_with_an_empty_fine_codebook(data, tmp_path: Path, monkeypatch) -> None:
    ref = build_lightgcn(data, dim=8, layers=2)
    ctx = _ctx(data, tmp_path, teacher=ref)
    coarse = C2FCoarse(c1=6, partition="spectral", refresh=False, **FAST).apply(ref, ctx)
    monkeypatch.setattr(MetaEmbedLightGCN, "fine_nonzeros", lambda self: 0)  # as if training pushed every value under tau
    with pytest.raises(MobilecError, match=r"fine codebook ended with no non-zeros .*no-op"):
        C2FFine(c2=4, k2=2, n_components=3, partition="spectral", **FAST).apply(coarse, ctx)
