"""Centralised (non-federated, non-private) training: the upper bound for the federated runs."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from shared.baselines import BPRMF, MostPop, full_ranking_of, p1_ranks_of
from shared.config import TrainConfig
from shared.model import Recommender
from shared.splits import Split
from shared.training import Sequences, full_ranking, p1_metrics, p1_ranks, train_epoch

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Test figures at the best validation epoch, with the validation curve."""

    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        keys = ("hr@10", "ndcg@10", "recall@20", "ndcg@20")
        return {k: round(self.test[k], 4) for k in keys if k in self.test} | {
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 1),
        }


def _select(score: dict[str, float]) -> float:
    return score["hr@10"] + score["ndcg@10"]


def train_central(
    model: Recommender,
    split: Split,
    tcfg: TrainConfig,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
    """Train ``model`` on every user's training interactions; keep the best-validation weights."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=tcfg.lr, weight_decay=tcfg.weight_decay
    )
    seqs = Sequences.from_lists(split.train)
    pool = split.negative_pool()  # a cold-start split: negatives only from warm items
    best: tuple[float, int, dict[str, float], dict[str, torch.Tensor]] = (-1.0, -1, {}, {})
    curve = []
    for epoch in range(tcfg.epochs):
        loss = train_epoch(model, opt, seqs, tcfg, rng, pool)
        val = p1_metrics(p1_ranks(model, split, "val"))
        point = {"epoch": epoch, "loss": loss, **{f"val_{k}": v for k, v in val.items()}}
        curve.append(point)
        if on_epoch:
            on_epoch(epoch, point)
        if _select(val) > best[0]:
            best = (_select(val), epoch, val, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[3])
    test = p1_metrics(p1_ranks(model, split, "test"))
    if split.cold_items is None:
        test |= full_ranking(model, split, "test")
    return RunResult(best[1], best[2], test, time.perf_counter() - t0, curve)


def run_mostpop(split: Split) -> RunResult:
    t0 = time.perf_counter()
    mp = MostPop(split)
    val = p1_metrics(p1_ranks_of(mp.score, split, "val"))
    test = p1_metrics(p1_ranks_of(mp.score, split, "test")) | full_ranking_of(mp.score_all, split)
    return RunResult(0, val, test, time.perf_counter() - t0)


def run_bprmf(
    split: Split, *, dim: int = 64, epochs: int = 40, lr: float = 2e-3, reg: float = 1e-4, seed: int = 0
) -> RunResult:
    """BPR-MF with the best validation epoch's test figures."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mf = BPRMF(split.num_users, split.num_items, dim)
    opt = torch.optim.Adam(mf.parameters(), lr=lr)
    best: tuple[float, int, dict[str, float], dict[str, torch.Tensor]] = (-1.0, -1, {}, {})
    curve = []
    for epoch in range(epochs):
        loss = mf.fit_epoch(split, opt, rng, reg=reg)
        val = p1_metrics(p1_ranks_of(mf.score, split, "val"))
        curve.append({"epoch": epoch, "loss": loss, **{f"val_{k}": v for k, v in val.items()}})
        if _select(val) > best[0]:
            best = (_select(val), epoch, val, copy.deepcopy(mf.state_dict()))
    mf.load_state_dict(best[3])
    test = p1_metrics(p1_ranks_of(mf.score, split, "test")) | full_ranking_of(mf.score_all, split)
    return RunResult(best[1], best[2], test, time.perf_counter() - t0, curve)
