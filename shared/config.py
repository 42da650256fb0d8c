"""Typed configuration: dataclasses that validate themselves and parse flat kebab-case dicts.

Flower's ``run_config`` is a flat mapping with namespaced kebab-case keys (``model.dim``,
``dp.noise-multiplier``); :func:`from_flat` turns the keys of one namespace into a dataclass and
rejects unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from shared.errors import ConfigError

T = TypeVar("T")

#: the datasets every command accepts (``--dataset``, ``data.dataset``); the first is the default, whose
#: benchmark figures sit at the top level of results/summary.json (others under ``datasets.<name>.``).
#: One place to point at the dataset registry.
DATASETS: tuple[str, ...] = ("ml-100k", "ml-latest-small")
DEFAULT_DATASET = DATASETS[0]
#: weight of the API's re-ranking of its top-50 toward items explained through a person or a company
#: (``FEDXREC_ENTITY_RERANK``; ``fedxrec bench kg`` measures the served order with it; docs/api.md)
ENTITY_RERANK = 0.1


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(key, msg)


@dataclass
class ModelConfig:
    """The recommender: item tower (backbone + adapters) and user side."""

    #: a local BERT path, ``"minilm"`` (the offline all-MiniLM-L6-v2 package) or a hub name
    backbone: str = "minilm"
    #: number of top backbone layers that carry adapters and run in training (0: adapter over pooled)
    top_layers: int = 0
    #: ``lora`` (peft, top layers) or ``bottleneck``
    adapter: str = "lora"
    lora_rank: int = 8
    lora_alpha: int = 16
    bottleneck: int = 64
    #: item/user vector size
    dim: int = 64
    #: add a per-item ID residual embedding to the text vector
    id_residual: bool = False
    #: DropoutNet-style: in training only, zero an item's ID residual with this probability (one draw per
    #: row of each item-tower call: per item per batch in central training), so that the text vector must
    #: carry the item alone part of the time, as it does for a cold item (0: the residual is always on)
    id_dropout: float = 0.0
    #: a learned per-item score bias (a per-item parameter: federated, uploaded only under DP-SGD)
    item_bias: bool = True
    #: ``dot`` (scale * <u, v>, a learned logit scale) or ``cosine`` (unit-length u and v: logits stay
    #: in [-1/temperature, 1/temperature], so the scale cannot collapse in early federated rounds)
    score: str = "dot"
    max_length: int = 128
    #: history items the user side reads (most recent last)
    history_len: int = 50
    #: ``history`` (recency-weighted history + personal vector) or ``personal`` (personal vector only;
    #: the record-level DP mode, where a sample's loss must not depend on other samples)
    user_mode: str = "history"
    dropout: float = 0.1
    #: train the item tower's adapter, norm and projection (false: they stay at their public start, and
    #: only the per-item bias and the user side train: a small DP-trained part)
    train_tower: bool = True
    #: train the personal user vector (false: it stays zero; the device ranks with its history alone)
    train_personal: bool = True
    #: matmul precision of the top layers (k > 0): ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 where the
    #: CPU has native bf16 instructions, else fp32). On MiniLM, bf16 moves unit item vectors by at most 2e-3
    #: (cosine to fp32 >= 0.99998) and makes a k = 1 client step 1.5x (bottleneck) to 2x (LoRA) faster on an
    #: AVX512-BF16 CPU; where bf16 is only emulated (AVX-512 alone) it is 2.5x slower, hence ``auto``
    top_precision: str = "auto"
    #: at most this many cached tokens (the first ones) reach the top layers (0: all; k > 0 only). Changes
    #: the model: the pooled features then read the first tokens' states alone (each of which has seen the
    #: whole text through the frozen lower layers)
    top_tokens: int = 0
    #: the top BertLayers' own dropout (attention and hidden, at the backbone's rates) while training
    #: (k > 0). False: they run as at evaluation, so training changes (not the evaluated function), and
    #: attention takes the fused kernel: a fed client's k = 1 step measured 0.83 s -> 0.45 s (opt-in)
    top_dropout: bool = True

    def __post_init__(self) -> None:
        _check(self.top_layers >= 0, "model.top-layers", f"must be >= 0, got {self.top_layers}")
        _check(self.adapter in ("lora", "bottleneck"), "model.adapter", f"lora|bottleneck, got {self.adapter!r}")
        _check(self.dim > 0, "model.dim", f"must be > 0, got {self.dim}")
        _check(self.lora_rank > 0, "model.lora-rank", f"must be > 0, got {self.lora_rank}")
        _check(self.bottleneck > 0, "model.bottleneck", f"must be > 0, got {self.bottleneck}")
        _check(self.history_len > 0, "model.history-len", f"must be > 0, got {self.history_len}")
        _check(self.max_length >= 8, "model.max-length", f"must be >= 8, got {self.max_length}")
        _check(
            self.user_mode in ("history", "personal"),
            "model.user-mode",
            f"history|personal, got {self.user_mode!r}",
        )
        _check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(0.0 <= self.id_dropout <= 1.0, "model.id-dropout", f"must be in [0, 1], got {self.id_dropout}")
        _check(
            self.id_dropout == 0.0 or self.id_residual,
            "model.id-dropout",
            f"drops the ID residual: needs model.id-residual = true (got id-dropout {self.id_dropout})",
        )
        _check(self.score in ("dot", "cosine"), "model.score", f"dot|cosine, got {self.score!r}")
        _check(
            self.top_precision in ("fp32", "bf16", "auto"),
            "model.top-precision",
            f"fp32|bf16|auto, got {self.top_precision!r}",
        )
        _check(self.top_tokens >= 0, "model.top-tokens", f"must be >= 0 (0: all tokens), got {self.top_tokens}")

    def per_item_keys(self) -> list[str]:
        """The run-config keys that switch on per-item (row-revealing) trainable parameters."""
        return [k for k, on in (("model.item-bias", self.item_bias), ("model.id-residual", self.id_residual)) if on]


def runs_root(out_dir: str = "") -> Path:
    """The folder that holds federated runs: ``fed.out-dir``, else ``$FEDXREC_RUNS_DIR``, else ``./runs``."""
    return Path(out_dir or os.environ.get("FEDXREC_RUNS_DIR", "runs")).resolve()


def check_uploads(model: ModelConfig, dp_enabled: bool) -> None:
    """DESIGN 3: per-item parameters are uploaded only under DP-SGD, whose noise covers every row.

    Without DP an upload of a per-item row shows which items a device touched, so a federated run
    without ``dp.enabled`` must switch them off.
    """
    keys = model.per_item_keys()
    if keys and not dp_enabled:
        raise ConfigError(
            keys[0],
            "per-item parameters would reveal a device's items in its upload; set it to false, "
            "or enable record-level DP (dp.enabled = true)",
        )


def check_dp_model(model: ModelConfig, dp_enabled: bool) -> None:
    """Record-level DP supports the adapter over the pooled features only (``model.top-layers = 0``).

    With top layers the item tower runs BERT layers over (batch × candidates) sequences merged into
    one batch dimension, so Opacus' per-sample gradients would come out per candidate row, not per
    interaction, and the clipping bound would not hold.
    """
    if dp_enabled and model.top_layers > 0:
        raise ConfigError(
            "model.top-layers",
            f"record-level DP (dp.enabled) needs model.top-layers = 0; got {model.top_layers} "
            "(per-sample gradients through the top BERT layers are not exact yet)",
        )


@dataclass
class TrainConfig:
    """Optimisation settings (central training and each client's local training)."""

    loss: str = "softmax"  # softmax (sampled softmax) | bce (BCE with sampled negatives)
    negatives: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 30
    seed: int = 0
    temperature: float = 0.1

    def __post_init__(self) -> None:
        _check(self.loss in ("softmax", "bce"), "train.loss", f"softmax|bce, got {self.loss!r}")
        _check(self.negatives > 0, "train.negatives", f"must be > 0, got {self.negatives}")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(self.batch_size > 0, "train.batch-size", f"must be > 0, got {self.batch_size}")
        _check(self.epochs > 0, "train.epochs", f"must be > 0, got {self.epochs}")
        _check(self.temperature > 0, "train.temperature", f"must be > 0, got {self.temperature}")


@dataclass
class DataConfig:
    """Which data, where, and the evaluation split."""

    dataset: str = "ml-100k"
    dir: str = ""  # empty: $FEDXREC_DATA_DIR or ./data
    kg_version: str = "dbpedia-live-2024"
    cache_dir: str = ".cache/fedxrec"
    split_seed: int = 0
    cold_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check(0.0 <= self.cold_fraction < 1.0, "data.cold-fraction", f"must be in [0, 1), got {self.cold_fraction}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(key, f"expected a boolean, got {value!r}")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected {kind.__name__}, got {value!r}") from None


def from_flat(cls: type[T], flat: Mapping[str, Any], prefix: str, *, strict: bool = True) -> T:
    """Build ``cls`` from the keys of ``flat`` under ``prefix.`` (kebab-case field names).

    Raises :class:`ConfigError` naming an unknown key (when ``strict``) or a value of the wrong type.
    """
    assert dataclasses.is_dataclass(cls)
    defaults = cls()  # type: ignore[call-arg]
    names = {f.name.replace("_", "-"): f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, name = key.partition(".")
        if head != prefix:
            continue
        if name not in names:
            if strict:
                raise ConfigError(key, f"unknown key; known: {sorted(prefix + '.' + n for n in names)}")
            continue
        kwargs[names[name]] = _coerce(key, value, getattr(defaults, names[name]))
    return cls(**kwargs)


def config_from_flat(flat: Mapping[str, Any]) -> Config:
    """Parse the ``data.``, ``model.`` and ``train.`` namespaces of a flat run config."""
    return Config(
        data=from_flat(DataConfig, flat, "data"),
        model=from_flat(ModelConfig, flat, "model"),
        train=from_flat(TrainConfig, flat, "train"),
    )


def to_flat(obj: Any, prefix: str) -> dict[str, Any]:
    """The inverse of :func:`from_flat` (for logging a run's settings)."""
    return {f"{prefix}.{f.name.replace('_', '-')}": getattr(obj, f.name) for f in fields(obj)}
