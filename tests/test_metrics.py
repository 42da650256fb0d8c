from __future__ import annotations

import numpy as np
import pytest

from shared.metrics import hit_rate, mrr, ndcg, ndcg_at_k, rank_of_target, recall_at_k


def test_rank_hit_ndcg_by_hand() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.9, 0.5], [0.5, 0.5, 0.1]])
    ranks = rank_of_target(scores)
    assert ranks.tolist() == [0, 2, 1]  # tie counts against the target
    assert hit_rate(ranks, 1) == pytest.approx(1 / 3)
    assert hit_rate(ranks, 2) == pytest.approx(2 / 3)
    assert ndcg(ranks, 2) == pytest.approx((1.0 + 0.0 + 1 / np.log2(3)) / 3)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)


def test_recall_and_ndcg_at_k_by_hand() -> None:
    ranked = np.array([[5, 3, 9, 1], [2, 4, 6, 8]])
    relevant = [np.array([9, 7]), np.array([4])]
    assert recall_at_k(ranked, relevant, 3) == pytest.approx((0.5 + 1.0) / 2)
    first = (1 / np.log2(4)) / (1 + 1 / np.log2(3))
    second = 1 / np.log2(3)
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx((first + second) / 2)


def test_constant_scorer_gets_nothing() -> None:
    ranks = rank_of_target(np.zeros((4, 100)))
    assert hit_rate(ranks, 10) == 0.0


def test_nan_scores_rank_the_target_last_not_first():
    # a diverged model (NaN scores) must not score HR@10 = 1.0
    ranks = rank_of_target(np.full((3, 100), np.nan))
    assert ranks.tolist() == [99, 99, 99]
    assert hit_rate(ranks, 10) == 0.0
    one_nan = np.arange(100, dtype=float)[None, ::-1].copy()  # target best
    one_nan[0, 5] = np.nan
    assert rank_of_target(one_nan).tolist() == [1]
