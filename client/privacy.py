"""Record-level DP bookkeeping for one node: planning the noise, and the accountant kept across rounds.

The privacy unit is **one interaction** (one training sample). Opacus' RDP accountant history
``[(noise_multiplier, sample_rate, steps), ...]`` is the whole privacy state of a node; it is stored in
the node's ``context.state`` between rounds, so ε is cumulative over the run even though a fresh
:class:`~opacus.PrivacyEngine` wraps the model each round.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from opacus.accountants.analysis import rdp as rdp_analysis

from client.config import PrivacyConfig
from shared.errors import ConfigError, FedxrecError


class PrivacyBudgetExhausted(FedxrecError):
    """A node's next round would take its ε past the run's target: it does not train again."""


@dataclass
class NodePrivacy:
    """A node's DP state: the chosen noise multiplier and the accountant's history."""

    noise_multiplier: float = 0.0
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"noise_multiplier": self.noise_multiplier, "history": self.history})

    @classmethod
    def from_json(cls, text: str) -> NodePrivacy:
        d = json.loads(text)
        return cls(float(d["noise_multiplier"]), [(float(a), float(b), int(c)) for a, b, c in d["history"]])

    def epsilon(self, delta: float) -> float:
        """Cumulative ε at ``delta`` over every step taken so far (0 before any step).

        Opacus' RDP analysis of the subsampled Gaussian mechanism, over :data:`ORDERS`, with the
        per-step RDP of each (noise, rate) pair cached: RDP composes linearly in the number of steps.
        """
        if not self.history:
            return 0.0
        rdp = sum(_rdp_per_step(sigma, q) * steps for sigma, q, steps in self.history)
        eps, _ = rdp_analysis.get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
        return float(eps)


#: RDP orders. Every order gives a valid bound; Opacus' default list adds 99 fractional orders whose
#: evaluation costs ~0.7 s per (noise, rate) pair, too slow for a node's every round. This list
#: (3 fractional, then integers) is a little looser at large ε and never optimistic.
ORDERS = [1.25, 1.5, 1.75, *range(2, 65), 80, 96, 128, 256]


@lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    return np.asarray(
        rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=ORDERS)
    )


def node_delta(cfg: PrivacyConfig, num_examples: int) -> float:
    """δ for a node with ``num_examples`` training interactions: the configured δ, at most 1/n."""
    return min(cfg.delta, 1.0 / max(num_examples, 1))


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate of a node's local batches (Opacus: 1 / number of batches per epoch)."""
    return 1.0 / math.ceil(num_examples / batch_size)


def planned_participations(num_rounds: int, fraction: float) -> int:
    """Rounds a node is planned to train in: the expectation plus two binomial standard deviations.

    With every node in every round this is exactly ``num_rounds``. With a fraction, a node sampled
    more often than planned ends above the target ε (its reported ε says so: the accountant counts
    the steps actually taken).
    """
    mean = num_rounds * fraction
    return min(num_rounds, math.ceil(mean + 2.0 * math.sqrt(mean * (1.0 - fraction))))


def check_budget(
    cfg: PrivacyConfig, privacy: NodePrivacy, *, num_examples: int, batch_size: int, local_epochs: int
) -> None:
    """Refuse a round whose steps would take the node's ε past ``dp.target-epsilon`` (no-op without one).

    Raises :class:`PrivacyBudgetExhausted`; the node's reply is then an error that the server logs,
    and the other nodes' updates are aggregated.
    """
    if cfg.target_epsilon <= 0:
        return
    q = sample_rate(num_examples, batch_size)
    nxt = NodePrivacy(
        privacy.noise_multiplier, [*privacy.history, (privacy.noise_multiplier, q, local_epochs * round(1 / q))]
    )
    eps = nxt.epsilon(node_delta(cfg, num_examples))
    if eps > cfg.target_epsilon:
        raise PrivacyBudgetExhausted(
            f"privacy budget exhausted: another round would reach ε={eps:.2f} > dp.target-epsilon={cfg.target_epsilon}"
        )


def plan_noise(
    cfg: PrivacyConfig, *, num_examples: int, batch_size: int, local_epochs: int, num_rounds: int, fraction: float
) -> float:
    """The noise multiplier for this node: fixed, or computed once for the target ε of the run."""
    if cfg.target_epsilon <= 0:
        return cfg.noise_multiplier
    q = sample_rate(num_examples, batch_size)
    steps = planned_participations(num_rounds, fraction) * local_epochs * round(1 / q)
    return noise_for_epsilon(cfg.target_epsilon, node_delta(cfg, num_examples), q, steps)


@lru_cache(maxsize=1024)
def noise_for_epsilon(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to 0.5%) whose ε after ``steps`` steps is at most the target."""

    def eps(sigma: float) -> float:
        return NodePrivacy(sigma, [(sigma, sample_rate, steps)]).epsilon(delta)

    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            raise ConfigError("dp.target-epsilon", f"cannot reach ε={target_epsilon} with δ={delta}")
    while hi - lo > 0.005 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi
