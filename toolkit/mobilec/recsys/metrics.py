"""Full-ranking Recall@K and NDCG@K with the user's known positives excluded.

For each user with at least one held-out positive, every item is scored, the items the user
already interacted with (train; train + validation when testing) are removed from the ranking,
and the top K are compared with the held-out positives:

- Recall@K = hits in the top K / number of held-out positives
- NDCG@K = sum over hits of 1/log2(rank + 1), divided by the same sum for an ideal ranking
  of min(K, number of held-out positives) hits.

Both are averaged over users.

>>> import torch
>>> s = torch.tensor([[0.9, 0.8, 0.1, 0.7]])
>>> m = rank_metrics(s, [np.array([3])], [np.array([0])], ks=(1, 2))
>>> m["recall@1"], m["recall@2"]
(0.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mobilec.errors import MobilecError

DEFAULT_KS = (10, 20, 50)


def rank_metrics(
    scores: torch.Tensor,
    relevant: Sequence[np.ndarray],
    exclude: Sequence[np.ndarray],
    *,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Metrics for a block of users: ``scores`` (n_users, n_items); per user relevant / excluded items."""
    n_users, n_items = scores.shape
    if len(relevant) != n_users or len(exclude) != n_users:
        raise MobilecError("rank_metrics: one relevant and one exclude array per score row are needed")
    kmax = max(ks)
    if kmax > n_items:
        raise MobilecError(f"K={kmax} exceeds the {n_items} items", hint=f"use K <= {n_items}")
    scores = scores.detach().to(torch.float32).clone()
    rows = np.concatenate([np.full(len(e), r) for r, e in enumerate(exclude)]) if n_users else np.zeros(0, int)
    cols = np.concatenate(list(exclude)) if n_users else np.zeros(0, int)
    if len(rows):
        scores[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = -torch.inf
    top = torch.topk(scores, kmax, dim=1).indices.numpy()
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    counted = 0
    for r in range(n_users):
        rel = relevant[r]
        if len(rel) == 0:
            continue
        counted += 1
        hit = np.isin(top[r], rel)
        for k in ks:
            h = hit[:k]
            totals[f"recall@{k}"] += h.sum() / len(rel)
            idcg = discounts[: min(k, len(rel))].sum()
            totals[f"ndcg@{k}"] += (discounts[:k] * h).sum() / idcg
    totals["users"] = counted
    return totals


def evaluate_embeddings(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    data: object,
    split: str = "test",
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 1024,
) -> dict[str, float]:
    """Recall@K / NDCG@K of dot-product scores ``user_emb @ item_emb.T`` on ``split`` of ``data``."""
    return evaluate_scores(lambda users: user_emb[users] @ item_emb.T, data, split, ks=ks, batch_users=batch_users)


def evaluate_scores(score_fn, data, split: str = "test", *, ks: Sequence[int] = DEFAULT_KS, batch_users: int = 1024) -> dict[str, float]:
    """Like :func:`evaluate_embeddings` for any ``score_fn(user index tensor) -> (B, n_items) scores``."""
    users = data.eval_users(split)
    relevant = data.user_items(split)
    known = data.known_positives(split)
    totals: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(users), batch_users):
            block = users[start : start + batch_users]
            s = score_fn(torch.as_tensor(block, dtype=torch.long))
            part = rank_metrics(s, [relevant[u] for u in block], [known[u] for u in block], ks=ks)
            for key, value in part.items():
                totals[key] = totals.get(key, 0.0) + value
    n = max(totals.pop("users", 0.0), 1.0)
    out = {key: float(value / n) for key, value in totals.items()}
    out["users"] = int(n)
    return out
