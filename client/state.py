"""A node's persistent state between rounds, kept in Flower's ``context.state`` (never uploaded).

* ``personal`` (ArrayRecord): the personal parameters (``user.personal.*``);
* ``privacy`` (ConfigRecord): the DP accountant history and the node's noise multiplier (JSON).

``context.state`` lives only as long as one run. So that a resubmitted or resumed run neither resets a
node's ε nor forgets its personal parameters, the same state is also written on the node's own disk
after every round (atomically), in ``<state dir>/<fed.run-name>.npz``, and read back when a run starts
with an empty ``context.state``. The state dir is ``node_config`` ``state-dir``; by default a
``.fedxrec-state`` folder beside a device's data file, or ``<runs dir>/<run name>/nodes/p<id>`` for a
simulated node.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client.privacy import NodePrivacy
from shared.errors import DataError
from shared.io import atomic_path
from shared.model import Recommender
from shared.params import arrays_to_state

PERSONAL_KEY = "personal"
PRIVACY_KEY = "privacy"


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def record_of(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Arrays for the wire; a 0-d parameter travels as shape (1,) (Flower's Array is at least 1-d)."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(np.atleast_1d(v))) for k, v in arrays.items()})


def match_scalars(arrays: dict[str, np.ndarray], reference: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Undo the wire's 1-d form of 0-d parameters (shape (1,) where the reference is a scalar)."""
    return {
        k: a.reshape(()) if k in reference and reference[k].ndim == 0 and a.shape == (1,) else a
        for k, a in arrays.items()
    }


def restore_personal(state: RecordDict, model: Recommender) -> bool:
    """Load the node's personal parameters into ``model``; False when this node has none yet."""
    if PERSONAL_KEY not in state.array_records:
        return False
    ref = model.personal_state()
    arrays = match_scalars(arrays_of(state.array_records[PERSONAL_KEY]), ref)
    model.load_partial(arrays_to_state(arrays, ref, source="node state"))
    return True


def store_personal(state: RecordDict, model: Recommender) -> None:
    state[PERSONAL_KEY] = record_of({k: v.numpy().copy() for k, v in model.personal_state().items()})


def load_privacy(state: RecordDict) -> NodePrivacy | None:
    if PRIVACY_KEY not in state.config_records:
        return None
    return NodePrivacy.from_json(str(state.config_records[PRIVACY_KEY]["json"]))


def store_privacy(state: RecordDict, privacy: NodePrivacy) -> None:
    state[PRIVACY_KEY] = ConfigRecord({"json": privacy.to_json()})


def load_global(record: ArrayRecord, model: Recommender) -> None:
    """Load the broadcast shared parameters (checked: names, shapes, finite values)."""
    ref = model.shared_state()
    model.load_partial(arrays_to_state(match_scalars(arrays_of(record), ref), ref, source="global model"))


def upload_arrays(model: Recommender, names: list[str], dtype: str) -> dict[str, np.ndarray]:
    """The shared parameters to upload, cast to ``dtype``."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        return {n: params[n].detach().numpy().astype(dtype) for n in names}


def save_node_state(path: Path, state: RecordDict) -> None:
    """Write the personal parameters and the privacy record of ``state`` to ``path`` (atomic)."""
    arrays: dict[str, np.ndarray] = {}
    if PERSONAL_KEY in state.array_records:
        arrays = {f"personal/{k}": v for k, v in arrays_of(state.array_records[PERSONAL_KEY]).items()}
    meta = {"privacy": str(state.config_records[PRIVACY_KEY]["json"]) if PRIVACY_KEY in state.config_records else None}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy stubs type the kwargs as allow_pickle
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_node_state(path: Path, state: RecordDict) -> bool:
    """Fill an empty ``state`` from ``path``; False when there is no file.

    A corrupt file is an error, never silently ignored: that would reset the node's ε.
    """
    if not path.is_file():
        return False
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            personal = {k.split("/", 1)[1]: z[k].copy() for k in z.files if k.startswith("personal/")}
        privacy = meta["privacy"]
        if privacy is not None:
            NodePrivacy.from_json(privacy)  # validate before use
    except Exception as e:
        raise DataError(path, f"unreadable node state ({type(e).__name__}: {e}); move it away to start afresh") from e
    if personal:
        state[PERSONAL_KEY] = record_of(personal)
    if privacy is not None:
        state[PRIVACY_KEY] = ConfigRecord({"json": privacy})
    return True
