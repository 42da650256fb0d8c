"""Record-level DP bookkeeping for one device: public planning, the device's own floor, its ledger.

The privacy unit is **one interaction** (one training sample), under add/remove adjacency. Everything
that sets the privacy loss is public: the noise multiplier σ, the Poisson sampling rate q
(``dp.sample-rate``) and the number of steps per round (``dp.local-steps``) come from the run config,
never from a device's data size n, so ε after r participations is the same for every device and
nothing about n needs to leave it. δ is ``dp.delta``; a device never trains on more than
``1/(10·δ)`` interactions (its newest ones), so δ ≤ 1/(10·n) always holds.

Opacus' RDP accountant history ``[(noise_multiplier, sample_rate, steps), ...]`` is a device's whole
privacy state. A device keeps it in two places: per run (in its node state, so a resumed run
continues) and in its **ledger** (every run the device ever trained in, whatever its name), against
which the device's own ε ceiling (``node_config`` ``dp-max-epsilon``) is checked: the server cannot
reset it by renaming a run.

Randomness that protects the device (DP noise, Poisson sampling, negatives under DP) comes from a
fresh generator per round seeded from the OS (:func:`secure_seed`), never from the node id, the round
or anything in a message; tests pass an explicit seed.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from client.config import DeviceFloor
from shared.errors import DataError, FedxrecError
from shared.io import atomic_path
from shared.privacy import (  # noqa: F401  (re-exported: the device's accounting is the shared one)
    ORDERS,
    Entry,
    PrivacyConfig,
    as_entry,
    epsilon_of,
    max_examples,
    noise_for_epsilon,
    plan_noise,
    planned_participations,
    round_entry,
)


class PrivacyBudgetExhausted(FedxrecError):
    """A device's next round would take its ε past the run's target or its own ceiling."""


class PrivacyRefused(FedxrecError):
    """A run's privacy settings are weaker than the device's own floor: the device does not take part."""


def secure_seed() -> int:
    """A 63-bit seed from the OS entropy pool (``secrets``): nobody else can regenerate what it drives."""
    return secrets.randbits(63)


@dataclass
class NodePrivacy:
    """A device's DP state in one run: the run's noise multiplier and the accountant's history."""

    noise_multiplier: float = 0.0
    history: list[Entry] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"noise_multiplier": self.noise_multiplier, "history": self.history})

    @classmethod
    def from_json(cls, text: str) -> NodePrivacy:
        d = json.loads(text)
        return cls(float(d["noise_multiplier"]), [as_entry(e) for e in d["history"]])

    def epsilon(self, delta: float) -> float:
        """Cumulative ε at ``delta`` over every step of this history (0 before any step)."""
        return epsilon_of(self.history, delta)


def check_run(floor: DeviceFloor, cfg: PrivacyConfig, noise_multiplier: float | None) -> None:
    """Refuse a run whose privacy settings are weaker than this device's floor (:class:`PrivacyRefused`)."""
    if not cfg.enabled:
        if floor.required:
            raise PrivacyRefused(
                "this device requires record-level DP (node_config dp-required = true) and the run has dp.enabled = false"
            )
        return
    if noise_multiplier is not None and noise_multiplier < floor.min_noise:
        raise PrivacyRefused(
            f"the run's noise multiplier {noise_multiplier:.3g} is below this device's dp-min-noise {floor.min_noise:g}"
        )
    if floor.max_epsilon > 0 and cfg.target_epsilon > floor.max_epsilon:
        raise PrivacyRefused(
            f"the run's dp.target-epsilon {cfg.target_epsilon:g} is above this device's dp-max-epsilon {floor.max_epsilon:g}"
        )
    if floor.max_epsilon > 0 and cfg.target_epsilon <= 0:
        raise PrivacyRefused(
            f"the run sets no dp.target-epsilon, and this device caps ε at dp-max-epsilon {floor.max_epsilon:g}"
        )
    if cfg.delta > floor.max_delta:
        raise PrivacyRefused(
            f"the run's dp.delta {cfg.delta:g} is above this device's dp-max-delta {floor.max_delta:g}"
        )


def check_budget(cfg: PrivacyConfig, privacy: NodePrivacy, *, floor: DeviceFloor, ledger: list[Entry]) -> None:
    """Refuse a round that would take ε past the run's target, or the device's lifetime ε past its ceiling.

    ``ledger`` is the device's accountant history over every other run. Raises
    :class:`PrivacyBudgetExhausted`.
    """
    step = round_entry(cfg, privacy.noise_multiplier)
    if cfg.target_epsilon > 0:
        eps = epsilon_of([*privacy.history, step], cfg.delta)
        if eps > cfg.target_epsilon * (1 + 1e-9):
            raise PrivacyBudgetExhausted(
                f"privacy budget exhausted: another round would reach ε={eps:.2f} > dp.target-epsilon={cfg.target_epsilon}"
            )
    if floor.max_epsilon > 0:
        total = epsilon_of([*ledger, *privacy.history, step], floor.max_delta)
        if total > floor.max_epsilon * (1 + 1e-9):
            raise PrivacyBudgetExhausted(
                f"device budget exhausted: another round would take this device's ε over all runs to {total:.2f} "
                f"> its dp-max-epsilon {floor.max_epsilon:g}"
            )


class Ledger:
    """A device's accountant history over every run it trained in, on its own disk (JSON, atomic writes).

    ``{"runs": {run name: [[σ, q, steps], ...]}}``. A corrupt ledger is an error, never a reset.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[str, list[Entry]] = {}
        if path.is_file():
            try:
                d = json.loads(path.read_text())
                self.runs = {str(k): [as_entry(e) for e in v] for k, v in d["runs"].items()}
            except Exception as e:
                raise DataError(path, f"unreadable privacy ledger ({type(e).__name__}: {e})") from e

    def others(self, run_name: str) -> list[Entry]:
        """Every entry of the runs other than ``run_name``."""
        return [h for name, hist in self.runs.items() if name != run_name for h in hist]

    def record(self, run_name: str, history: list[Entry]) -> None:
        """Store ``run_name``'s whole history (it only grows) and write the ledger."""

        def steps(hist: list[Entry]) -> dict[tuple[float, float, int], int]:
            out: dict[tuple[float, float, int], int] = {}
            for sigma, q, k, g in hist:
                out[(sigma, q, g)] = out.get((sigma, q, g), 0) + k
            return out

        old, new = steps(self.runs.get(run_name, [])), steps(history)
        if any(new.get(key, 0) < k for key, k in old.items()):
            raise PrivacyRefused(f"run {run_name!r} would shrink this device's privacy ledger {self.path}")
        self.runs[run_name] = [as_entry(h) for h in history]
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"runs": self.runs}))

    def epsilon(self, delta: float) -> float:
        return epsilon_of([h for hist in self.runs.values() for h in hist], delta)
