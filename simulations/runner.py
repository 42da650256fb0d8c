"""In-process federated simulations (``flwr.simulation.run_simulation``) with a given run config.

``flwr run .`` is the main way to run the app; this runner is for presets and benchmarks, where the
run config (normally read from ``pyproject.toml`` by Flower) is injected into each handler's context.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

REPO = Path(__file__).resolve().parents[1]
ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray nices its workers (15) by default: on a shared machine the nodes then starve
    "RAY_worker_niceness": "0",
}

log = logging.getLogger(__name__)


def app_defaults(pyproject: Path = REPO / "pyproject.toml") -> dict[str, Any]:
    """The run-config schema and defaults: ``[tool.flwr.app.config]`` of ``pyproject.toml``."""
    with open(pyproject, "rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def run_config(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults plus ``overrides``; an unknown key is an error (as with ``flwr run -c``)."""
    cfg = app_defaults()
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise KeyError(f"unknown run-config keys {unknown}; add them to [tool.flwr.app.config] first")
    cfg.update(overrides)
    return cfg


def _with_config(context: Context, cfg: dict[str, Any]) -> Context:
    """The same context (its ``state`` object is shared, so node state persists) with ``cfg``."""
    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=context.node_config,
        state=context.state,
        run_config=dict(cfg),
    )


def configured_apps(config: Mapping[str, Any]) -> tuple[ServerApp, ClientApp]:
    """The fedxrec apps with ``config`` as their run config."""
    from client import app as capp_mod
    from server import app as sapp_mod

    cfg = dict(config)
    sapp, capp = ServerApp(), ClientApp()

    @sapp.main()
    def _main(grid: Grid, context: Context) -> None:
        sapp_mod.main(grid, _with_config(context, cfg))

    @capp.train()
    def _train(msg: Message, context: Context) -> Message:
        return capp_mod.train(msg, _with_config(context, cfg))

    @capp.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return capp_mod.evaluate(msg, _with_config(context, cfg))

    return sapp, capp


def simulate(overrides: Mapping[str, Any], *, num_supernodes: int, num_cpus: int | None = None) -> None:
    """Run one simulation in this process (Ray backend, one CPU per node)."""
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    from flwr.simulation import run_simulation

    sapp, capp = configured_apps(run_config(overrides))
    backend: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    if num_cpus:
        backend["init_args"] = {"num_cpus": num_cpus}
    run_simulation(sapp, capp, num_supernodes=num_supernodes, backend_config=backend)
