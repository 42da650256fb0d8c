"""Fault-injection ClientApps for the audit: the real fedxrec client, with its upload corrupted.

``poison`` modes: ``nan`` (one value NaN), ``inf`` (one value +Inf), ``huge`` (the update scaled by
1e4: finite but far outside the update-norm bound), ``cycle`` (nan, inf, huge by round).

* Deployment: ``app`` reads ``audit-poison`` from the node's ``node_config`` (absent: honest), e.g.
  ``flower-supernode --node-config 'partition-id=0 num-partitions=3 audit-poison="cycle"'`` with the
  ClientApp component set to ``simulations.audit_apps:app``.
* Simulation: :func:`poisoned_apps` returns ServerApp/ClientApp with a run config and the partition
  that lies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from client import app as real

MODES = ("nan", "inf", "huge", "cycle")
HUGE = 1e4


def corrupt(arrays: dict[str, np.ndarray], mode: str, server_round: int) -> dict[str, np.ndarray]:
    """A corrupted copy of an upload (float32). ``cycle`` picks nan/inf/huge by round."""
    if mode not in MODES:
        raise ValueError(f"poison mode must be one of {MODES}, got {mode!r}")
    if mode == "cycle":
        mode = ("nan", "inf", "huge")[(max(server_round, 1) - 1) % 3]
    out = {k: v.astype(np.float32).copy() for k, v in arrays.items()}
    name = max(out, key=lambda k: out[k].size)  # the largest tensor
    if mode == "huge":
        return {k: v * np.float32(HUGE) + np.float32(HUGE) for k, v in out.items()}
    out[name].reshape(-1)[0] = np.nan if mode == "nan" else np.inf
    return out


def poison_reply(reply: Message, mode: str, server_round: int) -> Message:
    """Replace the reply's ``arrays`` record with a corrupted one (metrics untouched)."""
    if reply.has_error() or "arrays" not in reply.content.array_records:
        return reply
    arrays = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
    bad = corrupt(arrays, mode, server_round)
    reply.content["arrays"] = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in bad.items()})
    return reply


def _round(msg: Message) -> int:
    return int(msg.content.config_records.get("config", {}).get("server-round", 0))


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The real training handler; nodes with ``audit-poison`` in node_config corrupt their reply."""
    server_round = _round(msg)
    reply = real.train(msg, context)
    mode = context.node_config.get("audit-poison")
    return poison_reply(reply, str(mode), server_round) if mode else reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return real.evaluate(msg, context)


def poisoned_apps(
    config: Mapping[str, Any], *, poisoned_partition: int | None, mode: str = "cycle"
) -> tuple[ServerApp, ClientApp]:
    """The fedxrec apps with ``config`` as run config; ``poisoned_partition`` (None: none) lies."""
    from server import app as sapp_mod
    from simulations.runner import _with_config

    cfg = dict(config)
    sapp, capp = ServerApp(), ClientApp()

    def ctx(context: Context) -> Context:
        # Simulation node ids are random per run, and the client seeds its local randomness from
        # the node id: a stable id per partition makes the clean and the poisoned run comparable
        # seed for seed, so they differ only by the poisoned client's update.
        c = _with_config(context, cfg)
        pid = int(context.node_config.get("partition-id", -1))
        return (
            c
            if pid < 0
            else Context(
                run_id=c.run_id, node_id=pid + 1, node_config=c.node_config, state=c.state, run_config=c.run_config
            )
        )

    @sapp.main()
    def _main(grid: Grid, context: Context) -> None:
        sapp_mod.main(grid, _with_config(context, cfg))

    @capp.train()
    def _train(msg: Message, context: Context) -> Message:
        server_round = _round(msg)
        reply = real.train(msg, ctx(context))
        if poisoned_partition is not None and int(context.node_config.get("partition-id", -1)) == poisoned_partition:
            return poison_reply(reply, mode, server_round)
        return reply

    @capp.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return real.evaluate(msg, ctx(context))

    return sapp, capp


def upload_of(reply: Message) -> dict[str, np.ndarray]:
    """The arrays a reply uploads (for tests)."""
    return {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
