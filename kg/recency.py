"""Time order of a history and its linking-interaction-recency (LIR) weights.

LIR follows Balloccu et al., "Post Processing Recommender Systems with Knowledge Graphs for
Recency, Popularity, and Diversity of Explanations", SIGIR 2022 (Sec. 3): a user's interactions
are sorted by time and an exponentially weighted moving average runs over their positions,
``s_0 = x_0``, ``s_i = beta * x_i + (1 - beta) * s_{i-1}`` with ``x_i = i``, then min-max
normalised per user to [0, 1] (the newest interaction gets 1). The authors' code
(giacoballoccu/explanation-quality-recsys, ``path_data_loader.generate_LIR_matrix``) does the same
over positions with pandas ``ewm(span=10)`` (``alpha = 2/11``, bias-adjusted); here the recursive
form with ``beta`` (default 0.3) is used. A user with a single interaction gets 0, as there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_BETA = 0.3


def order_by_time(history: Sequence[int], timestamps: Sequence[float] | None = None) -> list[int]:
    """History items oldest first, each once (a repeated item keeps its latest position).

    Without timestamps the history is taken as already ordered, newest last; with timestamps it is
    stable-sorted by them (equal timestamps keep their given order).

    Raises
    ------
    ValueError
        If ``timestamps`` does not have one entry per history item.
    """
    items = list(history)
    if timestamps is not None:
        if len(timestamps) != len(items):
            raise ValueError(f"timestamps has {len(timestamps)} entries for {len(items)} history items")
        order = sorted(range(len(items)), key=lambda i: timestamps[i])
        items = [items[i] for i in order]
    latest = {item: pos for pos, item in enumerate(items)}
    return sorted(latest, key=latest.__getitem__)


def lir_weights(n: int, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Normalised EWMA of positions ``0..n-1``: shape ``(n,)``, 0 for the oldest, 1 for the newest.

    Raises
    ------
    ValueError
        If ``n < 0`` or ``beta`` is not in ``(0, 1]``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    if n <= 1:
        return np.zeros(n)
    s = np.empty(n)
    s[0] = 0.0
    for i in range(1, n):
        s[i] = beta * i + (1.0 - beta) * s[i - 1]
    return (s - s[0]) / (s[-1] - s[0])


def lir_by_item(
    history: Sequence[int], timestamps: Sequence[float] | None = None, beta: float = DEFAULT_BETA
) -> dict[int, float]:
    """LIR value of every history item (see the module docstring)."""
    ordered = order_by_time(history, timestamps)
    return dict(zip(ordered, lir_weights(len(ordered), beta).tolist(), strict=True))
