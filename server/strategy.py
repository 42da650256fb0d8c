"""Strategy construction and update hygiene.

:class:`GuardedStrategy` sits outside the aggregation strategy (and outside Flower's DP wrappers):
it drops replies whose arrays have unknown or missing names, wrong shapes, NaN/Inf, or an update norm
above the bound, casts float16 uploads to float32 before averaging, and keeps the previous global
model when an aggregate is not finite.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    Strategy,
)

from server.config import FedConfig

log = logging.getLogger(__name__)

ARRAYS = "arrays"


def sum_eval_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Federated P1 metrics from per-node sums and counts: HR@10 = sum(hits) / sum(count)."""
    tot: dict[str, float] = {}
    for rec in records:
        for mr in rec.metric_records.values():
            for k, v in mr.items():
                if isinstance(v, (int, float)):
                    tot[k] = tot.get(k, 0.0) + float(v)
    out: dict[str, float] = {"nodes": float(len(records))}
    for which in ("val", "test"):
        c = tot.get(f"{which}-count", 0.0)
        out[f"{which}-count"] = c
        if c > 0:
            out[f"{which}-hr@10"] = tot.get(f"{which}-hits", 0.0) / c
            out[f"{which}-ndcg@10"] = tot.get(f"{which}-ndcg", 0.0) / c
    return MetricRecord(out)  # type: ignore[arg-type]


def train_stats(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Round statistics of training replies: mean loss, ε max/mean, upload bytes."""
    vals: dict[str, list[float]] = {}
    for rec in records:
        for mr in rec.metric_records.values():
            for k, v in mr.items():
                if isinstance(v, (int, float)):
                    vals.setdefault(k, []).append(float(v))
    n = np.asarray(vals.get("num-examples", [1.0]))
    loss = np.asarray(vals.get("train-loss", [0.0]))
    eps = np.asarray(vals.get("epsilon", [0.0]))
    up = np.asarray(vals.get("upload-bytes", [0.0]))
    return MetricRecord(
        {
            "nodes": float(len(records)),
            "train-loss": float((loss * n).sum() / max(n.sum(), 1.0)) if len(loss) == len(n) else float(loss.mean()),
            "epsilon-max": float(eps.max()) if len(eps) else 0.0,
            "epsilon-mean": float(eps.mean()) if len(eps) else 0.0,
            "delta-max": float(max(vals.get("delta", [0.0]))),
            "noise-multiplier-mean": float(np.mean(vals.get("noise-multiplier", [0.0]))),
            "upload-bytes-total": float(up.sum()),
            "upload-bytes-per-client": float(up.mean()) if len(up) else 0.0,
        }
    )


def build_strategy(cfg: FedConfig, *, num_nodes_hint: int | None = None, local_lr: float = 3e-3) -> Strategy:
    """The aggregation strategy, optionally wrapped for user-level DP."""
    weight_key = "unit-weight" if cfg.user_dp != "off" else "num-examples"
    common = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_nodes,
        "min_evaluate_nodes": cfg.min_nodes if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": cfg.min_nodes,
        "weighted_by_key": weight_key,
        "train_metrics_aggr_fn": train_stats,
        "evaluate_metrics_aggr_fn": sum_eval_metrics,
    }
    inner: Strategy
    if cfg.strategy == "fedadam":
        inner = FedAdam(**common, eta=cfg.server_lr, eta_l=local_lr, tau=cfg.server_tau)  # type: ignore[arg-type]
    elif cfg.strategy == "fedavgm":
        inner = FedAvgM(**common, server_learning_rate=cfg.server_lr, server_momentum=cfg.server_momentum)  # type: ignore[arg-type]
    elif cfg.strategy == "fedprox":
        inner = FedProx(**common, proximal_mu=cfg.proximal_mu)  # type: ignore[arg-type]
    else:
        inner = FedAvg(**common)  # type: ignore[arg-type]
    if cfg.user_dp != "off":
        sampled = max(cfg.min_nodes, int((num_nodes_hint or cfg.min_nodes) * cfg.fraction_train))
        if cfg.user_dp == "fixed":
            inner = DifferentialPrivacyServerSideFixedClipping(inner, cfg.user_dp_noise, cfg.user_dp_clip, sampled)
        else:
            inner = DifferentialPrivacyServerSideAdaptiveClipping(
                inner, cfg.user_dp_noise, sampled, initial_clipping_norm=cfg.user_dp_clip
            )
    return GuardedStrategy(inner, max_update_norm=cfg.max_update_norm)


@dataclass
class Dropped:
    node_id: int
    reason: str


@dataclass
class RoundReport:
    """What the guard saw in one round."""

    replies: int = 0
    errors: list[Dropped] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    kept_previous: bool = False


def check_update(
    arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray], max_norm: float
) -> tuple[dict[str, np.ndarray] | None, str]:
    """Validated float32 arrays of one update, or ``None`` and the reason it is dropped."""
    if set(arrays) != set(reference):
        missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
        return None, f"parameter names differ (missing {missing[:3]}, unknown {extra[:3]})"
    out: dict[str, np.ndarray] = {}
    sq = 0.0
    for k, ref in reference.items():
        a = arrays[k]
        if ref.ndim == 0 and a.shape == (1,):  # 0-d parameters travel as shape (1,)
            a = a.reshape(())
        if a.shape != ref.shape:
            return None, f"{k}: shape {a.shape}, expected {ref.shape}"
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            return None, f"{k}: NaN or Inf"
        sq += float(np.square(a.astype(np.float64) - ref).sum())
        out[k] = a
    norm = float(np.sqrt(sq))
    if max_norm > 0 and norm > max_norm:
        return None, f"update norm {norm:.3g} above the bound {max_norm:g}"
    return out, ""


class GuardedStrategy(Strategy):
    """Update hygiene around any strategy (see the module docstring)."""

    def __init__(self, strategy: Strategy, *, max_update_norm: float) -> None:
        self.strategy = strategy
        self.max_update_norm = max_update_norm
        self.current: dict[str, np.ndarray] = {}
        self.report = RoundReport()

    def __getattr__(self, name: str) -> object:  # weighted_by_key, fraction_train, ...
        return getattr(self.strategy, name)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = {k: v.numpy().astype(np.float32) for k, v in arrays.items()}  # 0-d travel as (1,)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.report = rep = RoundReport()
        kept: list[Message] = []
        for msg in replies:
            rep.replies += 1
            nid = int(msg.metadata.src_node_id)
            if msg.has_error():
                rep.errors.append(Dropped(nid, str(msg.error.reason)))
                log.warning("round %d: node %d failed: %s", server_round, nid, msg.error.reason)
                continue
            recs = msg.content.array_records
            if ARRAYS not in recs:
                rep.dropped.append(Dropped(nid, "no arrays in reply"))
                continue
            clean, why = check_update(
                {k: v.numpy() for k, v in recs[ARRAYS].items()}, self.current, self.max_update_norm
            )
            if clean is None:
                rep.dropped.append(Dropped(nid, why))
                log.warning("round %d: dropped the update of node %d: %s", server_round, nid, why)
                continue
            msg.content[ARRAYS] = ArrayRecord(array_dict={k: Array(np.atleast_1d(v)) for k, v in clean.items()})
            kept.append(msg)
        if not kept:
            rep.kept_previous = True
            return None, None
        agg, metrics = self.strategy.aggregate_train(server_round, kept)
        if agg is not None and not all(np.isfinite(v.numpy()).all() for v in agg.values()):
            log.warning("round %d: the aggregate is not finite; keeping the previous global model", server_round)
            rep.kept_previous = True
            agg = None
            if hasattr(self.strategy, "current_arrays"):  # a server optimiser must not keep the bad step
                self.strategy.current_arrays = ArrayRecord(
                    array_dict={k: Array(np.atleast_1d(v)) for k, v in self.current.items()}
                )
        return agg, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ok = [m for m in replies if not m.has_error()]
        return self.strategy.aggregate_evaluate(server_round, ok) if ok else None
