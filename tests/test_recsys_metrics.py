"""Recall@K / NDCG@K against hand-computed values, with known positives excluded from the ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mobilec.errors import MobilecError
from mobilec.recsys.data import from_pairs
from mobilec.recsys.metrics import evaluate_embeddings, rank_metrics


def test_hand_computed_two_users() -> None:
    # 6 items. User 0: trained on item 0 (excluded), held out {2, 5}.
    # Scores rank items 0 > 1 > 2 > 3 > 4 > 5; without item 0 the ranking is 1, 2, 3, 4, 5.
    # User 1: trained on items 4 and 5, held out {3}; ranking 5 > 4 > 3 > ... -> without 4, 5: 3, 2, 1, 0.
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1.0, 2, 3, 4, 5, 6]])
    relevant = [np.array([2, 5]), np.array([3])]
    exclude = [np.array([0]), np.array([4, 5])]
    m = rank_metrics(scores, relevant, exclude, ks=(1, 2, 5))
    # user 0: top1 [1] no hit; top2 [1,2] hit at rank 2; top5 [1..5] hits at ranks 2 and 5
    # user 1: top1 [3] hit at rank 1
    assert m["users"] == 2
    assert m["recall@1"] == pytest.approx((0 + 1) / 1)  # summed over users; averaged by the caller
    assert m["recall@2"] == pytest.approx(0.5 + 1)
    assert m["recall@5"] == pytest.approx(1 + 1)
    d = [1 / math.log2(r + 1) for r in range(1, 6)]
    assert m["ndcg@1"] == pytest.approx(0 + 1)
    assert m["ndcg@2"] == pytest.approx(d[1] / (d[0] + d[1]) + 1)
    assert m["ndcg@5"] == pytest.approx((d[1] + d[4]) / (d[0] + d[1]) + 1)


def test_recall_divides_by_all_held_out_items() -> None:
    # 3 held-out items, K=1: a hit gives recall 1/3, NDCG 1 (the ideal DCG at K=1 is one hit)
    m = rank_metrics(torch.tensor([[3.0, 2, 1, 0]]), [np.array([0, 1, 2])], [np.array([], dtype=int)], ks=(1,))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == pytest.approx(1.0)


def test_evaluate_embeddings_averages_over_users_and_excludes_train() -> None:
    # two users, 5 items each -> split 3/1/1 per user
    data = from_pairs([0] * 5 + [1] * 5, [0, 1, 2, 3, 4] * 2, seed=0)
    items = torch.eye(5)
    # score each user's held-out test item highest among the items they have not trained on,
    # but put their training items even higher: excluded, so recall@1 must still be 1
    users = torch.zeros(2, 5)
    for u in range(2):
        users[u, data.user_items("train")[u]] = 10.0
        users[u, data.user_items("test")[u]] = 5.0
    m = evaluate_embeddings(users, items, data, "test", ks=(1,))
    assert m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0 and m["users"] == 2


def test_k_larger_than_catalogue_is_an_error() -> None:
    with pytest.raises(MobilecError, match="K=50 exceeds the 4 items"):
        rank_metrics(torch.zeros(1, 4), [np.array([1])], [np.array([], dtype=int)], ks=(50,))
