"""Typed client-side settings, parsed once from Flower's flat ``run_config`` and ``node_config``.

Run-config namespaces read here: ``local.*`` (:class:`LocalConfig`) and ``dp.*`` (:class:`PrivacyConfig`),
plus the shared ``data.*``, ``model.*`` and ``train.*`` (:mod:`shared.config`). Unknown keys in these
namespaces are a :class:`~shared.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.config import (
    Config,
    ModelConfig,
    _check,
    config_from_flat,
    from_flat,
    runs_root,
)
from shared.errors import ConfigError
from shared.privacy import PrivacyConfig, check_dp_run


@dataclass
class LocalConfig:
    """A node's local optimisation in one round (``local.*``)."""

    #: passes over the node's training interactions per round
    epochs: int = 1
    #: (expected) batch size; under DP the Poisson sampling rate is ``batch_size / n``
    batch_size: int = 32
    lr: float = 3e-3
    #: ``adam`` or ``sgd``; a fresh optimizer each round (no optimizer state is kept)
    optimizer: str = "adam"
    #: non-private training: at most this many local steps per round (0: every batch of ``epochs``
    #: passes). A capped node trains on a fresh random ``max_steps * batch_size`` of its samples each
    #: round and reports those as its ``num-examples`` (the FedAvg weight), so a node with thousands
    #: of interactions neither drifts far from the global model nor outweighs the cohort
    max_steps: int = 0
    #: learning-rate multiplier of the personal vector (it is only trained on this node)
    personal_lr_scale: float = 1.0
    #: dtype of the uploaded shared parameters (``float16`` halves the upload)
    upload_dtype: str = "float16"

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "local.epochs", f"must be > 0, got {self.epochs}")
        _check(self.batch_size > 0, "local.batch-size", f"must be > 0, got {self.batch_size}")
        _check(self.lr > 0, "local.lr", f"must be > 0, got {self.lr}")
        _check(self.optimizer in ("adam", "sgd"), "local.optimizer", f"adam|sgd, got {self.optimizer!r}")
        _check(self.max_steps >= 0, "local.max-steps", f"must be >= 0, got {self.max_steps}")
        _check(self.personal_lr_scale > 0, "local.personal-lr-scale", f"must be > 0, got {self.personal_lr_scale}")
        _check(
            self.upload_dtype in ("float16", "float32"),
            "local.upload-dtype",
            f"float16|float32, got {self.upload_dtype!r}",
        )


@dataclass
class DeviceFloor:
    """A device's own privacy floor (``node_config``): the device refuses a run that is weaker.

    The server cannot change these: they come from the device's own SuperNode configuration.
    """

    #: refuse runs without record-level DP
    required: bool = False
    #: refuse a noise multiplier below this
    min_noise: float = 0.0
    #: the most ε this device spends over all runs together (0: no ceiling); also refuses a run whose
    #: dp.target-epsilon is above it
    max_epsilon: float = 0.0
    #: refuse a dp.delta above this
    max_delta: float = 1e-5

    def __post_init__(self) -> None:
        _check(self.min_noise >= 0, "dp-min-noise", f"must be >= 0, got {self.min_noise}")
        _check(self.max_epsilon >= 0, "dp-max-epsilon", f"must be >= 0, got {self.max_epsilon}")
        _check(0 < self.max_delta < 1, "dp-max-delta", f"must be in (0, 1), got {self.max_delta}")


#: a real device's floor when its node_config says nothing: DP required, ε ≤ 8 over all runs, δ ≤ 1e-5
DEVICE_DEFAULT_FLOOR = DeviceFloor(required=True, max_epsilon=8.0)
#: a simulated node's floor when its node_config says nothing (the experimenter's own data)
SIMULATED_DEFAULT_FLOOR = DeviceFloor(required=False)


@dataclass
class ClientRunConfig:
    """Everything a node needs from ``run_config``."""

    core: Config = field(default_factory=Config)
    local: LocalConfig = field(default_factory=LocalConfig)
    dp: PrivacyConfig = field(default_factory=PrivacyConfig)
    num_rounds: int = 1
    #: the server's planned fraction of nodes per training round (for planning the DP noise)
    fraction_train: float = 1.0
    #: ``fed.run-name``: the node's persisted state (accountant, personal parameters) is kept per run name
    run_name: str = "fed"
    #: ``fed.out-dir`` (simulated nodes keep their state under ``<runs dir>/<run name>/nodes``)
    out_dir: str = ""

    @property
    def model(self) -> ModelConfig:
        """The model this node trains.

        Under record-level DP the user side is the personal vector only: a sample's loss must depend
        on that interaction alone (DESIGN decision 4a).
        """
        return self.dp.dp_model(self.core.model)


def parse_run_config(flat: Mapping[str, Any]) -> ClientRunConfig:
    """Parse a flat Flower run config (empty: every default)."""
    rounds = int(flat.get("num-server-rounds", 1))
    frac = float(flat.get("fed.fraction-train", 1.0))
    if rounds < 1:
        raise ConfigError("num-server-rounds", f"must be >= 1, got {rounds}")
    if not 0 < frac <= 1:
        raise ConfigError("fed.fraction-train", f"must be in (0, 1], got {frac}")
    rc = ClientRunConfig(
        core=config_from_flat(flat),
        local=from_flat(LocalConfig, flat, "local"),
        dp=from_flat(PrivacyConfig, flat, "dp"),
        num_rounds=rounds,
        fraction_train=frac,
        run_name=str(flat.get("fed.run-name", "fed")),
        out_dir=str(flat.get("fed.out-dir", "")),
    )
    check_dp_run(rc.model, rc.dp, secagg=str(flat.get("fed.secagg", False)).lower() in ("true", "1"))
    if rc.dp.enabled and rc.local.max_steps:
        raise ConfigError(
            "local.max-steps",
            f"acts on non-private training only, got {rc.local.max_steps} with dp.enabled"
            " (a DP device takes dp.local-steps steps a round; set local.max-steps = 0)",
        )
    return rc


@dataclass
class NodeSpec:
    """Where a node's data comes from (``node_config``)."""

    #: simulation: this node's partition of the dataset's users
    partition_id: int | None = None
    num_partitions: int | None = None
    #: real device: its own interactions file (``u.data`` or ``ratings.csv`` format)
    data_path: str | None = None
    #: real device: the shared catalogue directory (``u.item``+``u.genre`` or ``movies.csv``) and item cache
    catalog_path: str | None = None
    #: where the node keeps its state across runs (default: see :func:`NodeSpec.state_path`)
    state_dir: str | None = None
    #: the device's own privacy floor (``dp-required``, ``dp-min-noise``, ``dp-max-epsilon``, ``dp-max-delta``)
    floor: DeviceFloor = field(default_factory=DeviceFloor)

    def state_path(self, rc: ClientRunConfig) -> Path:
        """The node's state file for this run name (accountant and personal parameters).

        ``state-dir`` if given; a device's default is ``.fedxrec-state`` beside its data file; a
        simulated node's is ``<runs dir>/<run name>/nodes``.
        """
        if self.state_dir:
            return state_file(self.state_dir, rc.run_name)
        if self.data_path is not None:
            return state_file(Path(self.data_path).resolve().parent / ".fedxrec-state", rc.run_name)
        root = runs_root(rc.out_dir) / rc.run_name / "nodes"
        return root / f"p{self.partition_id:05d}-of-{self.num_partitions}.npz"

    def ledger_path(self, rc: ClientRunConfig) -> Path:
        """The device's privacy ledger (every run's accountant history), independent of the run name.

        ``state-dir`` or ``.fedxrec-state`` beside a device's data file; a simulated node (the
        experimenter's own data, a new experiment per run name) keeps it beside its state file.
        """
        if self.state_dir:
            return Path(self.state_dir) / "privacy-ledger.json"
        if self.data_path is not None:
            return Path(self.data_path).resolve().parent / ".fedxrec-state" / "privacy-ledger.json"
        return self.state_path(rc).with_suffix(".ledger.json")


def state_file(state_dir: str | Path, run_name: str) -> Path:
    """Where a node keeps its state for run ``run_name`` (one file per run name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_name) or "run"
    return Path(state_dir) / f"{safe}.npz"


FLOOR_KEYS = {
    "dp-required": "required",
    "dp-min-noise": "min_noise",
    "dp-max-epsilon": "max_epsilon",
    "dp-max-delta": "max_delta",
}


def parse_floor(flat: Mapping[str, Any], default: DeviceFloor) -> DeviceFloor:
    """The device's privacy floor from its ``node_config`` (keys :data:`FLOOR_KEYS`) over ``default``."""
    kwargs: dict[str, Any] = {}
    for key, name in FLOOR_KEYS.items():
        if key not in flat:
            continue
        v = flat[key]
        if name == "required":
            if isinstance(v, str) and v.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(key, f"expected a boolean, got {v!r}")
            kwargs[name] = v.lower() in ("true", "1") if isinstance(v, str) else bool(v)
        else:
            try:
                kwargs[name] = float(v)
            except (TypeError, ValueError):
                raise ConfigError(key, f"expected a number, got {v!r}") from None
    return replace(default, **kwargs)


def parse_node_config(flat: Mapping[str, Any]) -> NodeSpec:
    """Parse ``node_config``; a device path wins over a simulation partition."""
    state_dir = str(flat["state-dir"]) if "state-dir" in flat else None
    if "data-path" in flat:
        if "catalog-path" not in flat:
            raise ConfigError("catalog-path", "a node with data-path also needs catalog-path (the shared catalogue)")
        return NodeSpec(
            data_path=str(flat["data-path"]),
            catalog_path=str(flat["catalog-path"]),
            state_dir=state_dir,
            floor=parse_floor(flat, DEVICE_DEFAULT_FLOOR),
        )
    if "partition-id" in flat and "num-partitions" in flat:
        pid, num = int(flat["partition-id"]), int(flat["num-partitions"])
        if not 0 <= pid < num:
            raise ConfigError("partition-id", f"must be in [0, {num}), got {pid}")
        return NodeSpec(
            partition_id=pid, num_partitions=num, state_dir=state_dir, floor=parse_floor(flat, SIMULATED_DEFAULT_FLOOR)
        )
    raise ConfigError(
        "node_config",
        f"needs data-path and catalog-path (device) or partition-id and num-partitions (simulation); got {sorted(flat)}",
    )
