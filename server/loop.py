"""The server's round loop: train, aggregate, evaluate (federated and central), log, checkpoint, resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common.logger import log as flog
from flwr.serverapp import Grid
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from server.best import clear_best, save_if_best
from server.config import ServerRunConfig
from server.evaluation import central_p1
from server.runlog import EXPERIMENTER, append_log, progress_line, read_log, rewrite_log, write_summary
from server.strategy import build_strategy, check_failures
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.config import to_flat
from shared.errors import CheckpointError, ConfigError
from shared.model import Recommender, pca_init_projection
from shared.pipeline import Prepared, build_model, prepare
from shared.privacy import PrivacyConfig, epsilon_of, round_entry

log = logging.getLogger(__name__)


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """float32 arrays for the wire (0-d parameters as shape (1,): Flower's Array is at least 1-d)."""
    return ArrayRecord(
        array_dict={k: Array(np.atleast_1d(v.detach().numpy().astype(np.float32))) for k, v in state.items()}
    )


def from_record(record: ArrayRecord, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v.numpy().astype(np.float32)).reshape(reference[k].shape) for k, v in record.items()}


#: RDP orders for the user-level accountant (Opacus' defaults, extended up for large noise multipliers)
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 96, 128, 256, 512, 1024]


def user_dp_epsilon(*, noise_multiplier: float, participations: int, delta: float) -> float:
    """User-level ε after a node took part in ``participations`` rounds of server-side fixed clipping.

    The privacy unit is one node (one user's device); neighbouring runs differ by zero-out: one node's
    clipped update replaced by zero. Flower's ``DifferentialPrivacyServerSideFixedClipping`` clips each
    update to norm C (``fed.user-dp-clip``), averages the m sampled updates with equal weights and adds
    Gaussian noise of std ``noise_multiplier * C / m`` to the mean
    (``flwr/serverapp/strategy/dp_fixed_clipping.py``, ``compute_stdv`` in
    ``flwr/supercore/differential_privacy.py``): std ``noise_multiplier * C`` on the sum, whose
    sensitivity is C. Flower samples a fixed-size cohort without replacement (``random.sample`` in
    ``flwr/serverapp/strategy/strategy_utils.py``), so no amplification by Poisson subsampling is
    claimed: each round the node is in is a Gaussian mechanism (q = 1) and a round without it releases
    nothing that depends on its data. The ε is the RDP composition over its rounds (Opacus), converted
    at ``delta``; the run's user-level ε is this at the largest participation count of any node.

    Raises
    ------
    ValueError
        A negative participation count or a δ outside (0, 1).
    """
    if participations < 0:
        raise ValueError(f"participations must be >= 0, got {participations}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if participations == 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=participations, orders=RDP_ORDERS)
    eps, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def record_dp_epsilon(cfg: PrivacyConfig, *, noise_multiplier: float, participations: int) -> float:
    """Record-level ε of a device sampled in ``participations`` rounds, from public settings only.

    Every value that sets a device's privacy loss is in the run config: σ (planned by
    :func:`shared.privacy.plan_noise` from the rounds and the sampling fraction), the Poisson rate q and
    the steps per round (:func:`shared.privacy.round_entry`). So the ε a device's own accountant reaches
    after r rounds is the RDP composition of r such rounds, and the server computes it from how often
    it sampled the device; no device sends its ε. A sampled device spends its round whether or not its
    reply arrives, so counting sampled rounds is exact or an upper bound (a device that stopped at its
    budget spent less). The run's ε is this at the largest count of any node.

    Raises
    ------
    ValueError
        A negative participation count.
    """
    if participations < 0:
        raise ValueError(f"participations must be >= 0, got {participations}")
    if participations == 0:
        return 0.0
    sigma, q, steps, group = round_entry(cfg, noise_multiplier)
    return epsilon_of([(sigma, q, steps * participations, group)], cfg.delta)  # r equal rounds compose linearly


def record_dp_fields(cfg: PrivacyConfig, *, noise_multiplier: float, participations: int) -> dict[str, Any]:
    """A round row's record-level DP fields: ``epsilon`` (the most-sampled node's), ``delta``, σ, the count."""
    return {
        "epsilon": record_dp_epsilon(cfg, noise_multiplier=noise_multiplier, participations=participations),
        "delta": cfg.delta,
        "noise-multiplier": noise_multiplier,
        "max-participation": participations,
    }


def prior_participation(meta: dict[str, Any]) -> int:
    """The most-sampled node's count over the rounds before a restart (node ids need not survive one)."""
    return int(meta.get("max-participation", meta.get("user-dp-max-participation", 0)))


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    t0 = time.time()
    while True:
        ids = list(grid.get_node_ids())
        if len(ids) >= minimum:
            return ids
        if time.time() - t0 > timeout:
            raise TimeoutError(f"only {len(ids)} of the {minimum} nodes needed connected within {timeout:.0f}s")
        time.sleep(1.0)


def initial_model(rc: ServerRunConfig, prep: Prepared) -> Recommender:
    """The round-0 global model.

    A ``dot`` model starts with logit scale ``fed.init-scale``; with ``fed.proj-init = pca`` the item
    projection starts from the catalogue's principal directions.
    """
    model = build_model(rc.model, prep, prep.split.num_users)
    if rc.fed.init_scale > 0 and rc.model.score == "dot":
        with torch.no_grad():
            model.scale.fill_(rc.fed.init_scale)
    if rc.fed.proj_init == "pca" and rc.model.top_layers == 0:
        pca_init_projection(model)
    return model


def _resume(rc: ServerRunConfig, model: Recommender, ckpt_dir: Path) -> tuple[int, dict[str, Any]]:
    """Load the last checkpoint of this run name; returns the round it finished (0: fresh start) and its meta."""
    if not (rc.fed.resume and (ckpt_dir / "fedxrec.json").exists()):
        return 0, {}
    try:
        ck = load_checkpoint(ckpt_dir)
    except CheckpointError as e:
        flog(WARNING, "cannot resume from %s (%s); starting fresh", ckpt_dir, e)
        return 0, {}
    if dataclasses.asdict(ck.config) != dataclasses.asdict(model.cfg):
        raise ConfigError(
            "fed.run-name", f"checkpoint {ckpt_dir} was made with another model config; use a new run name"
        )
    model.load_partial({k: v.float() for k, v in ck.shared.items()})
    return int(ck.meta.get("round", 0)), dict(ck.meta)


def run_federated(grid: Grid, rc: ServerRunConfig, prep: Prepared | None = None) -> list[dict[str, Any]]:
    """Run the configured rounds; returns the per-round records (also in ``<runs>/<name>/rounds.jsonl``).

    A private run (:attr:`ServerRunConfig.private`) sends no federated evaluation: its validation and test
    figures are the experimenter's central evaluation on the whole dataset (rows labelled ``"eval":
    "experimenter"``), outside the protocol, and so is the choice of its best round.
    """
    torch.set_num_threads(1)
    out = rc.fed.runs_dir()
    out.mkdir(parents=True, exist_ok=True)
    prep = prep or prepare(rc.core, progress=False)
    model = initial_model(rc, prep)
    ckpt_dir = out / "checkpoint"
    start, meta = _resume(rc, model, ckpt_dir)
    # node ids need not survive a restart, so rounds before it add to every node's count (an upper bound)
    prior = prior_participation(meta)
    log_path = out / "rounds.jsonl"
    rows = read_log(log_path, upto_round=start) if start else []
    rewrite_log(log_path, rows)
    if not start:
        clear_best(out)  # a best-round checkpoint of an earlier run of this name
    # the data keys name the split the run trained on (a cold-start benchmark of its checkpoint checks them)
    data = {k: v for k, v in to_flat(rc.core.data, "data").items() if k not in ("data.dir", "data.cache-dir")}
    settings = {"num-server-rounds": rc.num_rounds, **data, **to_flat(rc.fed, "fed"), **to_flat(rc.model, "model")}
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    if start >= rc.num_rounds:
        flog(INFO, "run %s already finished %d rounds (checkpoint %s)", rc.fed.run_name, start, ckpt_dir)
        return rows
    if start:
        flog(INFO, "resuming run %s after round %d from %s", rc.fed.run_name, start, ckpt_dir)

    if rc.distributed:
        raise ConfigError("dp.mode", "distributed DP runs under SecAgg+ only (fed.secagg, server.secagg.run_secagg)")
    sigma = rc.noise_multiplier() if rc.dp_enabled else 0.0
    nodes = wait_for_nodes(grid, rc.fed.min_nodes, rc.fed.timeout)
    strategy = build_strategy(rc.fed, record_dp=rc.dp_enabled, num_nodes_hint=len(nodes), local_lr=rc.local_lr)
    fed_eval = rc.fed.fraction_evaluate > 0 and not rc.private  # nodes refuse evaluation under DP
    arrays = to_record(model.shared_state())
    item_ids = prep.dataset.catalogue.ids
    flog(
        INFO,
        "fedxrec: %d nodes, %d rounds, strategy %s, outputs in %s",
        len(nodes),
        rc.num_rounds,
        rc.fed.strategy,
        out,
    )
    t_start = time.time()
    for rnd in range(start + 1, rc.num_rounds + 1):
        t0 = time.time()
        if rnd == start + 1:  # in simulation the first round also starts the node workers
            flog(INFO, "round %d/%d: training on the sampled nodes …", rnd, rc.num_rounds)
        replies = grid.send_and_receive(
            strategy.configure_train(
                rnd, arrays, ConfigRecord({"lr-scale": rc.fed.lr_scale(rnd, rc.num_rounds)}), grid
            ),
            timeout=rc.fed.timeout,
        )
        agg, tmetrics = strategy.aggregate_train(rnd, replies)
        train_seconds = time.time() - t0  # sampling, the nodes' training and aggregation (no evaluation)
        check_failures(rnd, strategy.report)  # a failing run stops with the nodes' error, not NaN rounds
        if agg is not None:
            arrays = to_record(from_record(agg, model.shared_state()))
        rep = strategy.report
        row: dict[str, Any] = {
            "round": rnd,
            "train": {
                **({"upload-bytes-per-client": float(np.mean(rep.upload_bytes))} if rep.upload_bytes else {}),
                **dict(tmetrics or {}),
            },
            "replies": rep.replies,
            "train-seconds": train_seconds,
            "failed": len(rep.errors),
            "dropped": len(rep.dropped),
        }
        if rep.skipped:
            row["skipped"] = rep.skipped
        if rep.errors:
            row["errors"] = [e.reason[:300] for e in rep.errors[:3]]
        participation = prior + strategy.max_participation
        if rc.dp_enabled:
            row.update(record_dp_fields(rc.dp, noise_multiplier=sigma, participations=participation))
        if rc.fed.user_dp != "off":
            row["user-dp-max-participation"] = participation
            row["user-dp-epsilon"] = user_dp_epsilon(
                noise_multiplier=rc.fed.user_dp_noise, participations=participation, delta=rc.fed.user_dp_delta
            )
        eval_round = rnd % rc.fed.eval_every == 0 or rnd == rc.num_rounds
        if fed_eval and eval_round:
            ereplies = grid.send_and_receive(
                strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid), timeout=rc.fed.timeout
            )
            em = strategy.aggregate_evaluate(rnd, ereplies)
            row["fed"] = dict(em or {})
        model.load_partial(from_record(arrays, model.shared_state()))
        if rc.fed.central_eval and eval_round:
            row["central"] = {**central_p1(model, prep.split, "val"), **central_p1(model, prep.split, "test")}
            if rc.private:
                row["eval"] = EXPERIMENTER
        row["seconds"] = time.time() - t0
        ck_meta = {"round": rnd, "run-name": rc.fed.run_name, "settings": settings}
        if rc.dp_enabled or rc.fed.user_dp != "off":
            ck_meta["max-participation"] = participation
        save_checkpoint(model, item_ids, ckpt_dir, meta=ck_meta)
        rows.append(row)
        append_log(log_path, row)
        save_if_best(model, item_ids, out, rows, source="central" if rc.private else "fed", meta=ck_meta)
        # time left at the pace of the rounds after the first (which also started the simulation's workers)
        done = rnd - start
        if done == 1:
            first = time.time() - t_start
        pace = (time.time() - t_start - first) / (done - 1) if done > 1 else first
        flog(INFO, "%s", progress_line(row, rc.num_rounds, eta=pace * (rc.num_rounds - rnd)))
    for line in write_summary(rows, out, rc.fed.run_name, source="central" if rc.private else "fed").splitlines():
        flog(INFO, "%s", line)
    return rows
