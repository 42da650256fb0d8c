"""What a device's reply may carry, per mode: the privacy boundary, on one screen.

Every reply the handlers build goes through :func:`train_metrics` or :func:`eval_metrics`; a field
that is not declared for the mode is an error, never silently sent.

* ``plain`` (no DP): the shared parameters, and the example count (FedAvg's weight), the training
  loss, the step count and the upload size. Without DP nothing is protected: these are exact.
* ``dp`` (record-level DP, local or distributed): the DP-noised shared parameters (or noised gradient
  share) and the constant ``unit-weight`` = 1, nothing else. The example count n, the loss, the step
  count, σ and ε are functions of the device's data (or of public settings the server already has),
  so none of them is sent; the server weighs every reply alike and computes ε from the public
  settings and the rounds it sampled the device in. Federated evaluation is refused (per-node hits
  and NDCG computed from the raw history would travel un-noised).
* ``secagg`` (SecAgg+, legacy workflow): only the masked vector; the legacy reply's weight is 1 and
  its metrics are empty (:func:`client.legacy.fit_reply`). Evaluation is refused.
"""

from __future__ import annotations

from typing import Any

from client.privacy import PrivacyRefused

TRAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "plain": ("num-examples", "unit-weight", "train-loss", "local-steps", "upload-bytes"),
    "dp": ("unit-weight",),
    "secagg": (),
}
EVAL_FIELDS: dict[str, tuple[str, ...] | None] = {
    "plain": (
        "val-hits",
        "val-ndcg",
        "val-count",
        "test-hits",
        "test-ndcg",
        "test-count",
        "num-examples",
        "unit-weight",
    ),
    "dp": None,
    "secagg": None,
}


def reply_mode(*, dp_enabled: bool, secagg: bool) -> str:
    """The reply mode of a round: DP wins over SecAgg+ (a DP reply sent through SecAgg+ is still DP)."""
    if dp_enabled:
        return "dp"
    return "secagg" if secagg else "plain"


def train_metrics(mode: str, values: dict[str, Any]) -> dict[str, Any]:
    """The declared training-reply fields of ``mode``, taken from ``values`` (each must be there)."""
    return {k: values[k] for k in TRAIN_FIELDS[mode]}


def check_eval_allowed(mode: str) -> tuple[str, ...]:
    """The evaluation-reply fields of ``mode``; :class:`PrivacyRefused` in a mode that sends none."""
    fields = EVAL_FIELDS[mode]
    if fields is None:
        raise PrivacyRefused(
            f"federated evaluation is refused in {mode} mode: per-node hits and NDCG from the raw history "
            "would leave the device un-noised"
        )
    return fields


def eval_metrics(mode: str, values: dict[str, Any]) -> dict[str, Any]:
    """The declared evaluation-reply fields of ``mode``, taken from ``values``."""
    return {k: values[k] for k in check_eval_allowed(mode)}
