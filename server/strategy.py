"""Strategy construction and update hygiene.

:class:`GuardedStrategy` sits outside the aggregation strategy (and outside Flower's DP wrapper):
it drops replies whose arrays have unknown or missing names, wrong shapes, NaN/Inf, or an update norm
above the bound, and replies from nodes outside the round's cohort; casts float16 uploads to float32
before averaging; and keeps the previous global model when an aggregate is not finite. It records the
nodes of each round's cohort (user-level DP is accounted per node, :func:`server.loop.user_dp_epsilon`)
and, under user-level DP, skips a round with fewer clean replies than the noise is calibrated for.

A node's example count is private data: a private run (record-level DP, user-level DP or SecAgg+)
averages with the constant ``unit-weight`` (every reply carries 1) instead of ``num-examples``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    Strategy,
)

from server.config import ADAPTIVE_REFUSED, FedConfig
from shared.errors import ConfigError

log = logging.getLogger(__name__)

ARRAYS = "arrays"
NUM_EXAMPLES, UNIT_WEIGHT = "num-examples", "unit-weight"
#: a round in which more than this fraction of the replies are node errors stops the run
#: (:func:`check_failures`): a bug or missing data fails every node alike and must not be averaged away
#: round after round, while a few failing devices (a bad file, a refused budget) are tolerated
MAX_FAILED_FRACTION = 0.5


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
    """Round statistics of training replies: the reply count, and whatever the replies carry of loss, ε, bytes.

    Under DP the replies carry only ``unit-weight``: then the record holds ``nodes`` alone (no loss or
    ε is made up). The loss is weighted by ``num-examples`` when every reply sends it, else a plain mean.
    """
    vals: dict[str, list[float]] = {}
    for rec in records:
        for mr in rec.metric_records.values():
            for k, v in mr.items():
                if isinstance(v, (int, float)):
                    vals.setdefault(k, []).append(float(v))
    out: dict[str, float] = {"nodes": float(len(records))}
    loss, n = vals.get("train-loss", []), vals.get(NUM_EXAMPLES, [])
    if loss:
        weighted = len(n) == len(loss) and sum(n) > 0
        out["train-loss"] = float(np.dot(loss, n) / sum(n)) if weighted else float(np.mean(loss))
    if eps := vals.get("epsilon"):
        out["epsilon-max"], out["epsilon-mean"] = float(max(eps)), float(np.mean(eps))
    if delta := vals.get("delta"):
        out["delta-max"] = float(max(delta))
    if noise := vals.get("noise-multiplier"):
        out["noise-multiplier-mean"] = float(np.mean(noise))
    if up := vals.get("upload-bytes"):
        out["upload-bytes-total"], out["upload-bytes-per-client"] = float(sum(up)), float(np.mean(up))
    return MetricRecord(out)  # type: ignore[arg-type]


def cohort_size(num_nodes: int, *, fraction: float, min_nodes: int) -> int:
    """How many nodes Flower's ``FedAvg.configure_train`` samples from ``num_nodes`` connected ones.

    ``max(int(num_nodes * fraction), min_nodes)``, drawn without replacement (``random.sample`` in
    ``flwr/serverapp/strategy/strategy_utils.py:sample_nodes``); the count is taken at each round.
    """
    return max(int(num_nodes * fraction), min_nodes)


def build_strategy(
    cfg: FedConfig, *, record_dp: bool, num_nodes_hint: int | None = None, local_lr: float = 3e-3
) -> GuardedStrategy:
    """The aggregation strategy inside the update guard, wrapped for user-level DP (``fed.user-dp = fixed``).

    Parameters
    ----------
    cfg : FedConfig
        The federation settings.
    record_dp : bool
        Whether the nodes train under record-level DP (``dp.enabled``). With it, with user-level DP or
        with SecAgg+ the updates are averaged with the constant ``unit-weight`` (a node's example count
        is private data) and no federated evaluation is configured.
    num_nodes_hint : int or None
        Nodes connected now: the DP wrapper's noise is calibrated for the cohort Flower samples from
        that many (:func:`cohort_size`), and re-calibrated each round to the cohort actually sampled.
    local_lr : float
        FedAdam's ``eta_l``.

    Returns
    -------
    GuardedStrategy
        The guard around the (possibly DP-wrapped) strategy.

    Raises
    ------
    ConfigError
        ``fed.user-dp = adaptive``, which cannot be accounted (:data:`server.config.ADAPTIVE_REFUSED`).
    """
    private = record_dp or cfg.user_dp != "off" or cfg.secagg
    weight_key = UNIT_WEIGHT if private else NUM_EXAMPLES
    fraction_evaluate = 0.0 if private else cfg.fraction_evaluate
    common = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": cfg.min_nodes,
        "min_evaluate_nodes": cfg.min_nodes if fraction_evaluate > 0 else 0,
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
    if cfg.user_dp == "fixed":
        sampled = cohort_size(num_nodes_hint or cfg.min_nodes, fraction=cfg.fraction_train, min_nodes=cfg.min_nodes)
        inner = DifferentialPrivacyServerSideFixedClipping(inner, cfg.user_dp_noise, cfg.user_dp_clip, sampled)
    elif cfg.user_dp != "off":
        raise ConfigError("fed.user-dp", ADAPTIVE_REFUSED)
    return GuardedStrategy(inner, max_update_norm=cfg.max_update_norm, weight_key=weight_key)


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
    #: nodes sampled this round
    cohort: int = 0
    #: why the round was skipped without aggregating ('' when it was not)
    skipped: str = ""
    #: bytes of each kept reply's arrays as received (measured here: DP replies do not report it)
    upload_bytes: list[int] = field(default_factory=list)


class NodeFailures(RuntimeError):
    """Too many nodes replied with an error in one round; the message names the commonest reason."""


def check_failures(server_round: int, report: RoundReport, max_fraction: float = MAX_FAILED_FRACTION) -> None:
    """Raise :class:`NodeFailures` when more than ``max_fraction`` of the round's replies are errors.

    Raises
    ------
    NodeFailures
        Naming the round, the count and the commonest node error (its reason as the node reported it).
    """
    failed = len(report.errors)
    if not failed or failed <= max_fraction * report.replies:
        return
    reason, count = Counter(e.reason for e in report.errors).most_common(1)[0]
    raise NodeFailures(
        f"round {server_round}: {failed} of {report.replies} nodes failed (more than {max_fraction:.0%}); "
        f"stopping the run. Node error ({count} of them, e.g. node {next(e.node_id for e in report.errors if e.reason == reason)}): "
        f"{reason}"
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: the line of a traceback that names the original exception ("client.privacy.PrivacyRefused: ...")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Refused|Failures)\w*): (.+)")
#: what the simulation's Ray backend wraps a ClientApp exception in
_WRAPPERS = ("ClientAppException", "RayTaskError")


def error_line(reason: str) -> str:
    """A node error's reason in one line (at most 1,500 characters).

    The original exception (``type: message``) inside the tracebacks and wrappers of the simulation's
    Ray backend, else the reason's last line.
    """
    lines = [_ANSI.sub("", ln).strip().strip("'<>") for ln in reason.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        m = _EXC_LINE.match(ln)
        if m and not any(w in m.group(1) for w in _WRAPPERS):
            return ln[:1500]
    return (lines[-1] if lines else reason)[:1500]


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
    """Update hygiene around any strategy, cohort bookkeeping, and the under-noised-round skip.

    Parameters
    ----------
    strategy : Strategy
        The aggregation strategy, possibly inside Flower's ``DifferentialPrivacyServerSideFixedClipping``.
    max_update_norm : float
        Updates farther than this from the global model are dropped (0: no bound). Not applied under
        user-level DP: the wrapper clips every update to ``fed.user-dp-clip``, and a drop decided by one
        update's norm would make the round's skip depend on that user's data.
    weight_key : str
        The metric the inner strategy averages with; ``unit-weight`` replies must carry exactly 1.
    """

    def __init__(self, strategy: Strategy, *, max_update_norm: float, weight_key: str = NUM_EXAMPLES) -> None:
        self.strategy = strategy
        self.dp = strategy if isinstance(strategy, DifferentialPrivacyServerSideFixedClipping) else None
        self.max_update_norm = 0.0 if self.dp is not None else max_update_norm
        if self.dp is not None and max_update_norm > 0:
            log.info(
                "user-level DP: updates are clipped to %g; fed.max-update-norm is not applied", self.dp.clipping_norm
            )
        self.weight_key = weight_key
        self.current: dict[str, np.ndarray] = {}
        self.cohort: set[int] = set()
        #: node id -> rounds whose cohort held it (user-level DP accounting, :func:`server.loop.user_dp_epsilon`)
        self.participation: Counter[int] = Counter()
        self.report = RoundReport()

    def __getattr__(self, name: str) -> object:  # weighted_by_key, fraction_train, ...
        return getattr(self.strategy, name)

    @property
    def base(self) -> Strategy:
        """The aggregation strategy itself (inside the DP wrapper, if any)."""
        return self.dp.strategy if self.dp is not None else self.strategy

    @property
    def max_participation(self) -> int:
        """The most rounds any one node has been sampled for (since this strategy was built)."""
        return max(self.participation.values(), default=0)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = {k: v.numpy().astype(np.float32) for k, v in arrays.items()}  # 0-d travel as (1,)
        msgs = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.cohort = {int(m.metadata.dst_node_id) for m in msgs}
        self.participation.update(self.cohort)
        if self.dp is not None and msgs and len(msgs) != self.dp.num_sampled_clients:
            # the noise on the mean is z * C / m: m must be the cohort Flower sampled this round
            log.warning(
                "round %d: %d nodes sampled, noise was calibrated for %d; re-calibrating",
                server_round,
                len(msgs),
                self.dp.num_sampled_clients,
            )
            self.dp.num_sampled_clients = len(msgs)
        return msgs

    def _weight_error(self, msg: Message) -> str:
        """Why a reply's weight is refused under uniform weighting ('' when it is exactly 1)."""
        if self.weight_key != UNIT_WEIGHT:
            return ""
        mrs = list(msg.content.metric_records.values())
        w = mrs[0].get(UNIT_WEIGHT) if len(mrs) == 1 else None
        if isinstance(w, bool) or w != 1:
            return f"uniform weighting needs one metric record with {UNIT_WEIGHT} = 1, got {w!r}"
        return ""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.report = rep = RoundReport(cohort=len(self.cohort))
        kept: list[Message] = []
        seen: set[int] = set()
        for msg in replies:
            rep.replies += 1
            nid = int(msg.metadata.src_node_id)
            if msg.has_error():
                rep.errors.append(Dropped(nid, error_line(str(msg.error.reason))))
                log.warning("round %d: node %d failed: %s", server_round, nid, rep.errors[-1].reason)
                continue
            why = ""
            if nid not in self.cohort or nid in seen:
                why = "a second reply" if nid in seen else "not in this round's cohort"
            seen.add(nid)
            recs = msg.content.array_records
            if not why and ARRAYS not in recs:
                why = "no arrays in reply"
            why = why or self._weight_error(msg)
            clean = None
            if not why:
                received = {k: v.numpy() for k, v in recs[ARRAYS].items()}
                clean, why = check_update(received, self.current, self.max_update_norm)
                if clean is not None:
                    rep.upload_bytes.append(sum(int(a.nbytes) for a in received.values()))
            if clean is None:
                rep.dropped.append(Dropped(nid, why))
                log.warning("round %d: dropped the update of node %d: %s", server_round, nid, why)
                continue
            msg.content[ARRAYS] = ArrayRecord(array_dict={k: Array(np.atleast_1d(v)) for k, v in clean.items()})
            if self.dp is not None:
                # only what the noise covers reaches the aggregate and the log
                for key in list(msg.content.metric_records):
                    del msg.content[key]
                msg.content["metrics"] = MetricRecord({UNIT_WEIGHT: 1})
            kept.append(msg)
        if self.dp is not None and len(kept) < self.dp.num_sampled_clients:
            # the wrapper would average m' < m updates under noise calibrated for m
            rep.skipped = f"{len(kept)} clean replies, the noise is calibrated for {self.dp.num_sampled_clients}"
            rep.kept_previous = True
            log.warning(
                "round %d: skipped (user-level DP): %s; keeping the previous global model", server_round, rep.skipped
            )
            return None, None
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
