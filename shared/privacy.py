"""Record-level DP settings and accounting shared by devices and server (``dp.*``).

Everything that sets a device's privacy loss is public: σ, the Poisson rate q and the steps per
round come from the run config, so the server computes the same ε a device's accountant does from
the number of rounds it sampled the device in, and nothing about a device's data needs to be sent.
The RDP analysis is Opacus' (subsampled Gaussian mechanism).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from opacus.accountants.analysis import rdp as rdp_analysis

from shared.config import ModelConfig, _check, check_dp_model, check_uploads
from shared.errors import ConfigError


@dataclass
class PrivacyConfig:
    """Record-level DP-SGD on each device (``dp.*``). The privacy unit is one interaction.

    Every value here is public (it comes from the run config), so ε depends on nothing a device holds.
    """

    enabled: bool = False
    #: ``local``: each device adds the whole noise to its own steps and uploads its DP model (no trust
    #: needed); ``distributed``: each device adds its share of one round's noise to its clipped gradient
    #: sum, and only the secure sum over the cohort (SecAgg+) is a DP release (trust: secure aggregation)
    mode: str = "local"
    #: target ε for the whole run; > 0 plans the noise multiplier once from the planned steps,
    #: 0 uses ``noise_multiplier`` as given
    target_epsilon: float = 0.0
    noise_multiplier: float = 1.0
    #: per-sample gradient clipping norm (of the shared parameters; the personal vector has its own)
    max_grad_norm: float = 1.0
    #: per-sample clipping norm of the personal user vector (0: clipped jointly with the shared parameters)
    personal_grad_norm: float = 0.0
    #: per-sample clipping norm of the per-item bias (0: clipped jointly with the shared parameters)
    bias_grad_norm: float = 0.0
    #: δ; a device trains on at most 1/(10·δ) interactions (its newest), so δ ≤ 1/(10·n)
    delta: float = 1e-5
    #: Poisson sampling rate of each step (public: the same for every device, whatever its n)
    sample_rate: float = 0.05
    #: DP steps per round (0: one expected pass, round(1 / sample-rate)); ``distributed`` takes one
    local_steps: int = 0
    #: normaliser of a step's noisy gradient sum (public; in place of the data-dependent batch size)
    expected_batch: float = 8.0
    #: what one DP sample is: ``interaction`` (its loss reads that interaction and the personal vector) or
    #: ``session`` (a device's interactions within one public time bucket of ``dp.session-seconds``, at
    #: most ``dp.session-cap``; each item is predicted from the session's other items). A session is
    #: changed by one interaction, so it is accounted as a group of two (:func:`epsilon_of`)
    sample: str = "interaction"
    session_seconds: int = 60
    session_cap: int = 8
    #: the model a DP run trains: a per-item bias (DESIGN 3: per-item rows only under DP-SGD), the item
    #: tower (false: it keeps its public start, so only a small part is DP-trained) and the personal vector
    item_bias: bool = True
    train_tower: bool = False
    train_personal: bool = False
    #: ``distributed``: the fewest replies a round needs; each device's noise share is calibrated so
    #: that this many shares already add up to the whole noise (slack for dropouts)
    min_shares: int = 2

    def __post_init__(self) -> None:
        _check(self.mode in ("local", "distributed"), "dp.mode", f"local|distributed, got {self.mode!r}")
        _check(self.sample in ("interaction", "session"), "dp.sample", f"interaction|session, got {self.sample!r}")
        _check(self.session_seconds > 0, "dp.session-seconds", f"must be > 0, got {self.session_seconds}")
        _check(self.session_cap >= 2, "dp.session-cap", f"must be >= 2, got {self.session_cap}")
        _check(self.target_epsilon >= 0, "dp.target-epsilon", f"must be >= 0, got {self.target_epsilon}")
        _check(self.noise_multiplier >= 0, "dp.noise-multiplier", f"must be >= 0, got {self.noise_multiplier}")
        _check(self.max_grad_norm > 0, "dp.max-grad-norm", f"must be > 0, got {self.max_grad_norm}")
        _check(self.personal_grad_norm >= 0, "dp.personal-grad-norm", f"must be >= 0, got {self.personal_grad_norm}")
        _check(self.bias_grad_norm >= 0, "dp.bias-grad-norm", f"must be >= 0, got {self.bias_grad_norm}")
        _check(0 < self.delta < 1, "dp.delta", f"must be in (0, 1), got {self.delta}")
        _check(0 < self.sample_rate <= 1, "dp.sample-rate", f"must be in (0, 1], got {self.sample_rate}")
        _check(self.local_steps >= 0, "dp.local-steps", f"must be >= 0, got {self.local_steps}")
        _check(self.expected_batch > 0, "dp.expected-batch", f"must be > 0, got {self.expected_batch}")
        _check(self.min_shares >= 1, "dp.min-shares", f"must be >= 1, got {self.min_shares}")
        if self.enabled and self.target_epsilon == 0 and self.noise_multiplier == 0:
            raise ConfigError("dp.noise-multiplier", "must be > 0 when dp.enabled and no dp.target-epsilon")

    def dp_model(self, model: ModelConfig) -> ModelConfig:
        """The model a run with these settings trains (without DP: ``model``).

        Under DP the user side is the personal vector only (a sample's loss depends on that
        interaction alone, DESIGN 4a), and ``dp.item-bias``, ``dp.train-tower`` and
        ``dp.train-personal`` pick the DP-trained part.
        """
        if not self.enabled:
            return model
        return replace(
            model,
            user_mode="personal",
            dropout=0.0,  # the DP noise regularises; dropout would only add noise to the per-sample scores
            item_bias=self.item_bias,
            train_tower=self.train_tower,
            train_personal=self.train_personal,
        )

    def group(self) -> int:
        """Sample-level add/remove changes one interaction can make (the accountant's group size)."""
        return 2 if self.sample == "session" else 1

    def steps_per_round(self) -> int:
        """DP steps a device takes in one round (public)."""
        if self.mode == "distributed":
            return 1
        return self.local_steps or max(1, round(1.0 / self.sample_rate))

    def clip_norms(self) -> dict[str, float]:
        """Per-sample clipping norm of each parameter group (``shared``, ``personal``, ``bias``)."""
        return {"shared": self.max_grad_norm, "personal": self.personal_grad_norm, "bias": self.bias_grad_norm}

    def total_clip(self) -> float:
        """The L2 sensitivity of one sample's clipped gradient over all groups (the noise scale's unit)."""
        return math.sqrt(sum(c * c for c in self.clip_norms().values()))


def check_dp_run(model: ModelConfig, dp: PrivacyConfig, *, secagg: bool) -> None:
    """What both the nodes and the server refuse in a run's model and DP settings (:class:`ConfigError`).

    Per-item parameters without DP (DESIGN 3), DP with top BERT layers, and distributed DP without
    SecAgg+: a share carries 1/``dp.min-shares`` of the noise, so only the secure sum is a DP release.
    """
    check_uploads(model, dp.enabled)
    check_dp_model(model, dp.enabled)
    if dp.enabled and dp.mode == "distributed" and not secagg:
        raise ConfigError("dp.mode", "distributed DP sends noise shares, which need SecAgg+: set fed.secagg = true")


#: one accountant entry: (noise multiplier σ, Poisson rate q, steps, group), where ``group`` is how many
#: sample-level add/remove changes one interaction can make (1: a sample is one interaction; 2: a sample
#: is a session, which one interaction's presence modifies: remove the old session, add the new one)
Entry = tuple[float, float, int, int]


def as_entry(e: tuple[float, ...] | list[float]) -> Entry:
    """An entry from JSON (3 fields: a pre-session history, group 1)."""
    return (float(e[0]), float(e[1]), int(e[2]), int(e[3]) if len(e) > 3 else 1)


def epsilon_of(history: list[Entry], delta: float) -> float:
    """Record-level ε at ``delta`` of an accountant history (subsampled Gaussian, composed over every entry).

    A group-2 entry enters at order β with 3·RDP(2β), the group-privacy bound for two add/remove steps
    (Mironov 2017, Prop. 11; valid for β ≥ 2). RDP composes additively over entries at each order.
    """
    if not history:
        return 0.0
    rdp = np.zeros(len(ORDERS))
    for sigma, q, steps, group in history:
        if group == 1:
            rdp = rdp + _rdp_per_step(sigma, q, tuple(ORDERS)) * steps
        elif group == 2:
            doubled = _rdp_per_step(sigma, q, tuple(2 * o for o in ORDERS))
            rdp = rdp + np.where(np.asarray(ORDERS) >= 2, 3.0 * doubled * steps, np.inf)
        else:
            raise ValueError(f"accountant entry with group {group}: only 1 and 2 are supported")
    eps, _ = rdp_analysis.get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)


#: RDP orders. Every order gives a valid bound; Opacus' default list adds 99 fractional orders whose
#: evaluation costs ~0.7 s per (noise, rate) pair, too slow for a node's every round. This list
#: (3 fractional, then integers) is a little looser at large ε and never optimistic.
ORDERS = [1.25, 1.5, 1.75, *range(2, 65), 80, 96, 128, 256]


@lru_cache(maxsize=512)
def _rdp_per_step(noise_multiplier: float, sample_rate: float, orders: tuple[float, ...]) -> np.ndarray:
    return np.asarray(
        rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders))
    )


def max_examples(delta: float) -> int:
    """The most interactions a device trains on at ``delta`` (δ ≤ 1/(10·n)); it keeps its newest ones."""
    return int(1.0 / (10.0 * delta))


def planned_participations(num_rounds: int, fraction: float) -> int:
    """Rounds a node is planned to train in: the expectation plus two binomial standard deviations.

    With every node in every round this is exactly ``num_rounds``. A node sampled more often stops
    when its budget is spent (:func:`check_budget`).
    """
    mean = num_rounds * fraction
    return min(num_rounds, math.ceil(mean + 2.0 * math.sqrt(mean * (1.0 - fraction))))


def round_entry(cfg: PrivacyConfig, noise_multiplier: float) -> Entry:
    """The accountant entry of one round: (σ, q, steps, group), all public."""
    return (noise_multiplier, cfg.sample_rate, cfg.steps_per_round(), cfg.group())


def plan_noise(cfg: PrivacyConfig, *, num_rounds: int, fraction: float) -> float:
    """The run's noise multiplier, from public settings only: fixed, or planned for ``dp.target-epsilon``."""
    if cfg.target_epsilon <= 0:
        return cfg.noise_multiplier
    steps = planned_participations(num_rounds, fraction) * cfg.steps_per_round()
    return noise_for_epsilon(cfg.target_epsilon, cfg.delta, cfg.sample_rate, steps, cfg.group())


@lru_cache(maxsize=1024)
def noise_for_epsilon(target_epsilon: float, delta: float, sample_rate: float, steps: int, group: int = 1) -> float:
    """The smallest noise multiplier (to 0.5%) whose ε after ``steps`` steps is at most the target."""

    def eps(sigma: float) -> float:
        return epsilon_of([(sigma, sample_rate, steps, group)], delta)

    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            raise ConfigError("dp.target-epsilon", f"cannot reach ε={target_epsilon} with δ={delta}")
    while hi - lo > 0.005 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi
