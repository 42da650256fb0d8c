"""The bodies of the ClientApp handlers: parse the message and configs, call :mod:`client.train`, reply."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from client.config import ClientRunConfig, LocalConfig, NodeSpec, parse_node_config, parse_run_config
from client.data import NodeData, load_node_data
from client.legacy import fit_reply, is_legacy, legacy_inputs
from client.privacy import Ledger, NodePrivacy, PrivacyRefused, check_budget, check_run, plan_noise
from client.replies import check_eval_allowed, eval_metrics, reply_mode, train_metrics
from client.state import (
    load_global,
    load_node_state,
    load_privacy,
    record_of,
    restore_personal,
    save_node_state,
    store_personal,
    store_privacy,
    upload_arrays,
)
from client.train import LocalResult, build_model, dp_share, evaluate_node, shared_names, train_dp, train_plain
from shared.model import Recommender, pca_init_projection
from shared.params import num_bytes

log = logging.getLogger(__name__)
torch.set_num_threads(1)  # one simulated node per core; intra-op threads only add overhead here


def _plain_seed(context: Context, server_round: int) -> int:
    """Seed of non-private training (reproducible experiments); never used under DP."""
    return (int(context.node_id) * 1_000_003 + server_round) % (2**31)


def _setup(context: Context) -> tuple[ClientRunConfig, NodeSpec, NodeData, Path, Recommender]:
    """Configs, data, state file and a fresh model for this node.

    A run's first message to the node picks up the state an earlier run of this name left on disk.
    """
    rc = parse_run_config(context.run_config)
    spec = parse_node_config(context.node_config)
    check_run(spec.floor, rc.dp, None)  # before touching the data: a weaker run is refused outright
    data = load_node_data(spec, rc.core)
    state_path = spec.state_path(rc)
    if not context.state.array_records and not context.state.config_records:
        if load_node_state(state_path, context.state):
            log.info("node state restored from %s", state_path)
    model = build_model(rc.model, data, seed=int(context.node_id) % (2**31))
    if not rc.model.train_tower:  # a frozen tower is never broadcast: rebuild its public start (PCA of the catalogue)
        _public_start(model, data)
    return rc, spec, data, state_path, model


_PCA: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _public_start(model: Recommender, data: NodeData) -> None:
    """Set the PCA projection of the public catalogue (the frozen tower's start).

    Computed once per process and catalogue: a simulated worker serves thousands of nodes.
    """
    key = (id(data.cache), model.cfg.dim)
    if key not in _PCA:
        pca_init_projection(model)
        _PCA[key] = (model.items.proj.weight.detach().clone(), model.items.proj.bias.detach().clone())
    w, b = _PCA[key]
    with torch.no_grad():
        model.items.proj.weight.copy_(w)
        model.items.proj.bias.copy_(b)


def _round_privacy(rc: ClientRunConfig, spec: NodeSpec, context: Context) -> tuple[NodePrivacy, Ledger]:
    """The run's accountant and the device's ledger, after the device's own checks (floor, budgets)."""
    privacy = load_privacy(context.state) or NodePrivacy(
        noise_multiplier=plan_noise(rc.dp, num_rounds=rc.num_rounds, fraction=rc.fraction_train)
    )
    check_run(spec.floor, rc.dp, privacy.noise_multiplier)
    ledger = Ledger(spec.ledger_path(rc))
    check_budget(rc.dp, privacy, floor=spec.floor, ledger=ledger.others(rc.run_name))
    return privacy, ledger


def _record_spend(rc: ClientRunConfig, context: Context, privacy: NodePrivacy, ledger: Ledger) -> None:
    """Write the round's spend to the ledger and the node state (before replying: a crash keeps it)."""
    ledger.record(rc.run_name, privacy.history)
    store_privacy(context.state, privacy)


def _train_private(
    rc: ClientRunConfig,
    spec: NodeSpec,
    context: Context,
    model: Recommender,
    data: NodeData,
    local: LocalConfig,
    mu: float,
) -> LocalResult:
    """One round of local record-level DP training."""
    privacy, ledger = _round_privacy(rc, spec, context)
    res = train_dp(model, data, privacy, lcfg=local, tcfg=rc.core.train, pcfg=rc.dp, proximal_mu=mu)
    _record_spend(rc, context, privacy, ledger)
    return res


def _share_private(
    rc: ClientRunConfig, spec: NodeSpec, context: Context, model: Recommender, data: NodeData, local: LocalConfig
) -> dict[str, np.ndarray]:
    """One round of distributed DP-SGD: a noise share for the secure sum."""
    privacy, ledger = _round_privacy(rc, spec, context)
    share = dp_share(
        model, data, privacy, tcfg=rc.core.train, pcfg=rc.dp, personal_lr=local.lr * local.personal_lr_scale
    )
    _record_spend(rc, context, privacy, ledger)
    return share


def train(msg: Message, context: Context) -> Message:
    """Train on this node's interactions; reply with the shared parameters (and :mod:`client.replies`)."""
    rc, spec, data, state_path, model = _setup(context)
    names = shared_names(model)
    legacy = is_legacy(msg)  # a SecAgg+ (legacy workflow) round
    if legacy:
        arrays, cfg = legacy_inputs(msg, names, train=True)
        load_global(record_of(arrays), model)
    else:
        cfg = dict(msg.content.config_records.get("config", {}))
        load_global(msg.content.array_records["arrays"], model)
    server_round = int(cfg.get("server-round", 0))
    mu = float(cfg.get("proximal-mu", 0.0))
    lr_scale = float(cfg.get("lr-scale", 1.0))  # the server's learning-rate schedule (fed.lr-decay)
    if not 0 < lr_scale <= 1:
        raise ValueError(f"lr-scale from the server must be in (0, 1], got {lr_scale}")
    local = dataclasses.replace(rc.local, lr=rc.local.lr * lr_scale)
    restore_personal(context.state, model)
    if rc.dp.enabled and rc.dp.mode == "distributed":
        if not legacy:  # a share is far too little noise on its own: only the secure sum is a DP release
            raise PrivacyRefused("dp.mode = distributed sends noise shares, which need secure aggregation (fed.secagg)")
        share = _share_private(rc, spec, context, model, data, local)
        store_personal(context.state, model)
        save_node_state(state_path, context.state)
        ref = model.shared_state()
        upload = {n: share[n] if n in share else np.zeros(tuple(ref[n].shape), np.float32) for n in names}
        return fit_reply(msg, upload, 1, train_metrics("dp", {"unit-weight": 1}))
    if rc.dp.enabled:
        res = _train_private(rc, spec, context, model, data, local, mu)
    else:
        rng = np.random.default_rng(_plain_seed(context, server_round))
        res = train_plain(model, data, lcfg=local, tcfg=rc.core.train, rng=rng, proximal_mu=mu)
    store_personal(context.state, model)
    save_node_state(state_path, context.state)  # before replying: a crash after this round keeps its ε

    upload = upload_arrays(model, names, rc.local.upload_dtype)
    mode = reply_mode(dp_enabled=rc.dp.enabled, secagg=legacy)
    metrics = train_metrics(
        mode,
        {
            "num-examples": res.num_examples,
            "unit-weight": 1,
            "train-loss": res.loss,
            "local-steps": res.steps,
            "upload-bytes": num_bytes(upload),
        },
    )
    if legacy:
        return fit_reply(msg, upload, 1, metrics)
    return Message(RecordDict({"arrays": record_of(upload), "metrics": MetricRecord(metrics)}), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Rank this node's own validation and test items; reply with HR/NDCG sums and counts (plain mode only)."""
    rc = parse_run_config(context.run_config)
    mode = reply_mode(dp_enabled=rc.dp.enabled, secagg=is_legacy(msg))
    check_eval_allowed(mode)  # refuses before any data is read in a mode that sends no evaluation
    _, _, data, _, model = _setup(context)
    if is_legacy(msg):
        arrays, _ = legacy_inputs(msg, shared_names(model), train=False)
        load_global(record_of(arrays), model)
    else:
        load_global(msg.content.array_records["arrays"], model)
    restore_personal(context.state, model)
    m: dict[str, Any] = evaluate_node(model, data, use_history=True)
    m = eval_metrics(mode, {**m, "num-examples": m["val-count"], "unit-weight": 1})
    return Message(RecordDict({"metrics": MetricRecord(m)}), reply_to=msg)
