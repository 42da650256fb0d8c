"""Ranking metrics. Ranks are 0-based positions of the held-out item (0 = top)."""

from __future__ import annotations

import numpy as np


def rank_of_target(scores: np.ndarray, target_col: int = 0) -> np.ndarray:
    """0-based rank of column ``target_col`` in each row of ``scores`` (B, C).

    Ties count against the target (pessimistic), so a constant scorer gets no credit; so does a NaN
    score on either side, so a diverged model ranks every target last instead of first.
    """
    t = scores[:, target_col : target_col + 1]
    others = np.delete(scores, target_col, axis=1)
    return ((others >= t) | np.isnan(others) | np.isnan(t)).sum(axis=1)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """HR@k: share of rows whose target is in the top ``k``."""
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item: 1/log2(rank + 2) inside the top ``k``, else 0."""
    if not len(ranks):
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank."""
    return float(np.mean(1.0 / (ranks + 1.0))) if len(ranks) else 0.0


def recall_at_k(ranked: np.ndarray, relevant: list[np.ndarray], k: int) -> float:
    """Recall@k for ranked item lists (B, >=k) against each row's relevant set."""
    vals = [
        len(set(r[:k].tolist()) & set(rel.tolist())) / len(rel)
        for r, rel in zip(ranked, relevant, strict=True)
        if len(rel)
    ]
    return float(np.mean(vals)) if vals else 0.0


def ndcg_at_k(ranked: np.ndarray, relevant: list[np.ndarray], k: int) -> float:
    """NDCG@k for ranked item lists against each row's relevant set (binary gains)."""
    vals = []
    for r, rel in zip(ranked, relevant, strict=True):
        if not len(rel):
            continue
        rs = set(rel.tolist())
        dcg = sum(1.0 / np.log2(i + 2) for i, x in enumerate(r[:k].tolist()) if x in rs)
        idcg = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(rs))))
        vals.append(dcg / idcg)
    return float(np.mean(vals)) if vals else 0.0
