"""Parameter (de)serialisation between models and the flat arrays that travel over the network."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def state_to_arrays(state: Mapping[str, torch.Tensor], dtype: np.dtype | None = None) -> dict[str, np.ndarray]:
    """Named tensors -> named numpy arrays (optionally cast, e.g. float16 for upload)."""
    out = {}
    for name, t in state.items():
        a = t.detach().cpu().numpy()
        out[name] = a.astype(dtype) if dtype is not None else a.copy()
    return out


def arrays_to_state(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, torch.Tensor], *, source: str = "update"
) -> dict[str, torch.Tensor]:
    """Named numpy arrays -> tensors shaped and typed like ``reference``.

    Raises ``ValueError`` naming the first missing/unknown parameter, wrong shape, or non-finite value.
    """
    missing = set(reference) - set(arrays)
    extra = set(arrays) - set(reference)
    if missing or extra:
        raise ValueError(f"{source}: missing parameters {sorted(missing)[:3]}, unknown {sorted(extra)[:3]}")
    out = {}
    for name, ref in reference.items():
        a = np.asarray(arrays[name])
        if tuple(a.shape) != tuple(ref.shape):
            raise ValueError(f"{source}: parameter {name!r} has shape {a.shape}, expected {tuple(ref.shape)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{source}: parameter {name!r} has NaN or Inf values")
        out[name] = torch.as_tensor(a, dtype=ref.dtype)
    return out


def num_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Payload size of a set of arrays (the bytes a client uploads, without framing)."""
    return int(sum(a.nbytes for a in arrays.values()))


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all arrays together."""
    return float(np.sqrt(sum(float(np.sum(np.square(a.astype(np.float64)))) for a in arrays.values())))
