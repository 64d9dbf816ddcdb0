"""LightGCN: the normalized graph, propagation, BPR training with early stopping, the trained-model cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilec.errors import MobilecError
from mobilec.recsys.data import synthetic_interactions
from mobilec.recsys.lightgcn import (
    BPRConfig,
    NegativeSampler,
    build_lightgcn,
    propagate,
    spmm,
    sym_norm_adj,
    train_lightgcn,
    train_or_load_lightgcn,
)
from mobilec.recsys.metrics import evaluate_embeddings


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions(60, 80, n_groups=4, per_user=12, seed=0)


def test_normalized_adjacency_matches_dense_formula() -> None:
    rows, cols, vals = torch.tensor([0, 0, 1]), torch.tensor([2, 3, 3]), torch.tensor([1.0, 0.5, 2.0])
    adj = sym_norm_adj(4, rows, cols, vals).to_dense()
    a = torch.zeros(4, 4)
    a[rows, cols] = vals
    a = a + a.T
    d = a.sum(1).rsqrt()
    assert torch.allclose(adj, d[:, None] * a * d[None, :])


def test_propagation_is_the_mean_of_powers_and_differentiable(data) -> None:
    model = build_lightgcn(data, dim=4, layers=2)
    dense = model.adj.to_dense()
    x = model.embedding.detach()
    expect = (x + dense @ x + dense @ dense @ x) / 3
    assert torch.allclose(propagate(model.adj, x, 2), expect, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    spmm(model.adj, xg).pow(2).sum().backward()
    assert torch.allclose(xg.grad, 2 * dense.T @ (dense @ x), atol=1e-5)


def test_negatives_are_never_training_positives(data) -> None:
    triples = NegativeSampler(data, seed=0).epoch()
    train = set(map(tuple, data.train.tolist()))
    assert len(triples) == len(data.train)
    assert not any((u, j) in train for u, _, j in triples.tolist())


def test_training_beats_the_untrained_model_and_restores_the_best(data) -> None:
    untrained = build_lightgcn(data, dim=8, layers=1)
    before = evaluate_embeddings(*untrained.final_embeddings(), data, "valid", ks=(20,))["recall@20"]
    cfg = BPRConfig(epochs=12, lr=3e-2, batch_size=512, eval_every=2, patience=2)
    model, result = train_lightgcn(data, dim=8, layers=1, cfg=cfg)
    after = evaluate_embeddings(*model.final_embeddings(), data, "valid", ks=(20,))["recall@20"]
    assert after == pytest.approx(result.best_valid)  # the best checkpoint is the one returned
    assert after > before + 0.2
    assert result.history and result.stopped in ("early-stop", "epochs")


def test_train_or_load_caches_by_data_and_settings(tmp_path: Path, data) -> None:
    cfg = BPRConfig(epochs=2, lr=1e-2, batch_size=512, eval_every=1)
    first, info1 = train_or_load_lightgcn(data, tmp_path, dim=8, layers=1, cfg=cfg)
    second, info2 = train_or_load_lightgcn(data, tmp_path, dim=8, layers=1, cfg=cfg)
    assert not info1["cached"] and info2["cached"]
    assert torch.equal(first.embedding, second.embedding)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    train_or_load_lightgcn(data, tmp_path, dim=4, layers=1, cfg=cfg)  # other settings: another entry
    assert len(list(tmp_path.glob("*.pt"))) == 2


@pytest.mark.parametrize("kwargs", [{"dim": 0}, {"layers": -1}])
def test_bad_dims(data, kwargs) -> None:
    with pytest.raises(MobilecError):
        build_lightgcn(data, **{"dim": 8, "layers": 1, **kwargs})


def test_bad_training_settings() -> None:
    with pytest.raises(MobilecError, match="must all be at least 1"):
        BPRConfig(batch_size=0)
    with pytest.raises(MobilecError, match="lr=0"):
        BPRConfig(lr=0)


def test_scores_of_forward_are_dot_products(data) -> None:
    model = build_lightgcn(data, dim=8, layers=1)
    users, items = model.final_embeddings()
    assert np.allclose(model(torch.tensor([3])).numpy(), (users[3:4] @ items.T).numpy(), atol=1e-6)
