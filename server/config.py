"""Typed server-side settings (``fed.*`` in the run config) and the model the server aggregates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
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
from shared.privacy import PrivacyConfig, check_dp_run, plan_noise

#: Why ``fed.user-dp = adaptive`` is refused: Flower 1.42's ``DifferentialPrivacyServerSideAdaptiveClipping``
#: (flwr/serverapp/strategy/dp_adaptive_clipping.py) cannot be given a correct ε.
ADAPTIVE_REFUSED = (
    "adaptive clipping cannot be accounted: Flower updates the clipping norm from this round's noisy "
    "clipped count before it adds the noise, so the noise is scaled to the new norm while the updates were "
    "clipped at the old one (a data-dependent noise multiplier with no lower bound); and its split of the "
    "noise between the update and the count assumes sensitivity 1/2 on the count, while it sums 0/1 bits "
    "(sensitivity 1). Use fed.user-dp = fixed"
)


@dataclass
class FedConfig:
    """Federation settings: strategy, sampling, update hygiene, user-level DP, SecAgg+, outputs."""

    #: ``fedavg`` | ``fedavgm`` (FedAvg with server momentum) | ``fedadam`` | ``fedprox``
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    #: ignored by a private run (:attr:`ServerRunConfig.private`), which sends no federated evaluation
    fraction_evaluate: float = 1.0
    #: federated evaluation every this many rounds (and always at the last round)
    eval_every: int = 1
    min_nodes: int = 2
    #: initial value of the shared logit scale (0: the model's own init, 1). Small values keep the
    #: first rounds' logits (scale * <u, v> / temperature) in range
    init_scale: float = 0.1
    #: round-0 item projection: ``pca`` (the top principal directions of the public catalogue's
    #: normalised text features, so the first rounds already rank by content) or ``random``
    proj_init: str = "pca"
    #: server learning rate: FedAvgM's (1.0 = plain averaging) or FedAdam's eta (about 0.01)
    server_lr: float = 1.0
    #: FedAvgM's server momentum: the update applied is momentum * previous + this round's mean update
    server_momentum: float = 0.9
    #: schedule of the nodes' local learning rate over the rounds: ``none`` or ``cosine`` (from 1 down to
    #: ``lr-floor`` times ``local.lr`` at the last round); the server sends the factor as ``lr-scale``
    lr_decay: str = "none"
    lr_floor: float = 0.1
    #: FedAdam adaptivity (tau)
    server_tau: float = 1e-3
    #: FedProx proximal weight
    proximal_mu: float = 0.01
    #: an update whose L2 distance to the global model exceeds this is dropped (0: no bound)
    max_update_norm: float = 50.0
    #: ``off`` | ``fixed``: user-level DP by server-side fixed clipping and Gaussian noise (Flower's
    #: wrapper), accounted per node without sampling amplification (:func:`server.loop.user_dp_epsilon`).
    #: ``adaptive`` is refused (see :data:`ADAPTIVE_REFUSED`)
    user_dp: str = "off"
    user_dp_noise: float = 1.0
    user_dp_clip: float = 1.0
    user_dp_delta: float = 1e-3
    #: secure aggregation (SecAgg+, legacy Flower workflow; needs at least 3 nodes)
    secagg: bool = False
    secagg_shares: int = 3
    secagg_threshold: int = 2
    #: each node clips every uploaded value (parameters; under ``dp.mode = distributed`` its noisy
    #: gradient-sum share) to [-range, range] before quantising to 2**22 levels: the secure mean is off
    #: by under 2 * range / 2**22 per value. Distributed DP widens it to what a share can reach
    #: (:func:`server.secagg.share_range`)
    secagg_clip_range: float = 8.0
    #: central evaluation of the global model on the whole dataset (simulation only)
    central_eval: bool = True
    #: where runs write logs, plots and checkpoints (empty: $FEDXREC_RUNS_DIR or ./runs)
    out_dir: str = ""
    run_name: str = "fed"
    resume: bool = True
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        _check(
            self.strategy in ("fedavg", "fedavgm", "fedadam", "fedprox"),
            "fed.strategy",
            f"fedavg|fedavgm|fedadam|fedprox, got {self.strategy!r}",
        )
        _check(0 < self.fraction_train <= 1, "fed.fraction-train", f"must be in (0, 1], got {self.fraction_train}")
        _check(
            0 <= self.fraction_evaluate <= 1,
            "fed.fraction-evaluate",
            f"must be in [0, 1], got {self.fraction_evaluate}",
        )
        _check(self.eval_every >= 1, "fed.eval-every", f"must be >= 1, got {self.eval_every}")
        _check(self.init_scale >= 0, "fed.init-scale", f"must be >= 0, got {self.init_scale}")
        _check(self.server_lr > 0, "fed.server-lr", f"must be > 0, got {self.server_lr}")
        _check(0 <= self.server_momentum < 1, "fed.server-momentum", f"must be in [0, 1), got {self.server_momentum}")
        _check(self.lr_decay in ("none", "cosine"), "fed.lr-decay", f"none|cosine, got {self.lr_decay!r}")
        _check(0 < self.lr_floor <= 1, "fed.lr-floor", f"must be in (0, 1], got {self.lr_floor}")
        _check(self.proj_init in ("pca", "random"), "fed.proj-init", f"pca|random, got {self.proj_init!r}")
        _check(self.min_nodes >= 1, "fed.min-nodes", f"must be >= 1, got {self.min_nodes}")
        _check(self.max_update_norm >= 0, "fed.max-update-norm", f"must be >= 0, got {self.max_update_norm}")
        _check(self.user_dp in ("off", "fixed", "adaptive"), "fed.user-dp", f"off|fixed|adaptive, got {self.user_dp!r}")
        _check(self.user_dp_noise >= 0, "fed.user-dp-noise", f"must be >= 0, got {self.user_dp_noise}")
        _check(self.user_dp_clip > 0, "fed.user-dp-clip", f"must be > 0, got {self.user_dp_clip}")
        _check(0 < self.user_dp_delta < 1, "fed.user-dp-delta", f"must be in (0, 1), got {self.user_dp_delta}")
        _check(self.user_dp != "adaptive", "fed.user-dp", ADAPTIVE_REFUSED)
        if self.user_dp != "off":
            # the wrappers add noise after the inner strategy's step: a server optimiser's state would
            # carry the un-noised clipped mean into later rounds
            _check(self.strategy == "fedavg", "fed.strategy", "user-level DP (fed.user-dp) runs with fedavg only")
        if self.secagg:
            _check(self.min_nodes >= 3, "fed.min-nodes", "SecAgg+ needs at least 3 nodes")
            _check(self.strategy in ("fedavg", "fedavgm"), "fed.strategy", "SecAgg+ runs with fedavg or fedavgm only")
            _check(self.user_dp == "off", "fed.user-dp", "SecAgg+ and server-side clipping exclude each other")

    def lr_scale(self, server_round: int, num_rounds: int) -> float:
        """The factor on ``local.lr`` in round ``server_round`` (1-based) of ``num_rounds``."""
        if self.lr_decay == "none" or num_rounds <= 1:
            return 1.0
        t = (server_round - 1) / (num_rounds - 1)
        return self.lr_floor + (1.0 - self.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    def runs_dir(self) -> Path:
        return runs_root(self.out_dir) / self.run_name


@dataclass
class ServerRunConfig:
    core: Config = field(default_factory=Config)
    fed: FedConfig = field(default_factory=FedConfig)
    num_rounds: int = 3
    #: the devices' record-level DP settings (``dp.*``): all public, so the server computes their ε
    dp: PrivacyConfig = field(default_factory=PrivacyConfig)
    local_lr: float = 3e-3

    @property
    def dp_enabled(self) -> bool:
        """Whether the devices train under record-level DP (``dp.enabled``)."""
        return self.dp.enabled

    @property
    def distributed(self) -> bool:
        """Record-level DP with the noise split over the cohort's shares (``dp.mode = distributed``)."""
        return self.dp.enabled and self.dp.mode == "distributed"

    def noise_multiplier(self) -> float:
        """The devices' noise multiplier σ, planned from public settings exactly as each device plans it."""
        return plan_noise(self.dp, num_rounds=self.num_rounds, fraction=self.fed.fraction_train)

    @property
    def private(self) -> bool:
        """Whether any privacy layer is on (record-level DP, user-level DP or SecAgg+).

        A private run weights updates uniformly (a node's example count is its private data), sends no
        federated evaluation (per-node hit counts would travel in the clear) and selects its best round
        on the experimenter's central validation figures.
        """
        return self.dp_enabled or self.fed.user_dp != "off" or self.fed.secagg

    @property
    def model(self) -> ModelConfig:
        """The aggregated model, the one the nodes train.

        Under record-level DP it is :meth:`PrivacyConfig.dp_model`: the user side personal-only
        (DESIGN 4a) and the DP-trained part picked by ``dp.item-bias``, ``dp.train-tower`` and
        ``dp.train-personal``.
        """
        return self.dp.dp_model(self.core.model)


def parse_server_config(flat: Mapping[str, Any]) -> ServerRunConfig:
    """Parse the flat run config (``local.*`` is the nodes'; ``dp.*`` is read by both: its values are public).

    Refuses what the nodes refuse too: ``dp.mode = distributed`` without ``fed.secagg``, and DP with
    ``model.top-layers > 0``; and distributed DP with cohorts that can be smaller than ``dp.min-shares``.
    """
    rounds = int(flat.get("num-server-rounds", 3))
    if rounds < 1:
        raise ConfigError("num-server-rounds", f"must be >= 1, got {rounds}")
    rc = ServerRunConfig(
        core=config_from_flat(flat),
        fed=from_flat(FedConfig, flat, "fed"),
        num_rounds=rounds,
        dp=from_flat(PrivacyConfig, flat, "dp"),
        local_lr=float(flat.get("local.lr", 3e-3)),
    )
    check_dp_run(rc.model, rc.dp, secagg=rc.fed.secagg)
    if not rc.model.train_tower and rc.fed.proj_init != "pca":
        # a frozen tower is never sent: every device rebuilds it, which only the public PCA start allows
        raise ConfigError("fed.proj-init", "a frozen item tower (dp.train-tower = false) needs fed.proj-init = pca")
    if rc.distributed:
        _check(
            rc.fed.min_nodes >= rc.dp.min_shares,
            "fed.min-nodes",
            f"distributed DP needs cohorts of at least dp.min-shares = {rc.dp.min_shares} nodes, "
            f"got fed.min-nodes = {rc.fed.min_nodes}",
        )
    return rc
