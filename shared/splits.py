"""Evaluation splits, seeded and persisted so that every run ranks the same candidates.

* **P1** (leave-one-out by time): per user, interactions stably sorted by timestamp (ties keep file
  order); the latest is test, the second latest validation, the rest training; each held-out item is
  ranked against 99 sampled items the user never interacted with.
* **Full ranking** uses the same held-out items, ranked against every item not in the user's training.
* **Item cold start**: a seeded 20% of items leave all training; each user's latest cold interaction
  is ranked against 99 sampled cold items the user never interacted with, and in full ranking over all
  cold items.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data import Interactions
from shared.errors import DataError
from shared.io import atomic_path

NUM_NEGATIVES = 99


@dataclass
class Split:
    """Per-user training histories and held-out items, users in ascending id order.

    ``train[u]`` is user ``users[u]``'s training items (catalogue rows) in time order, with their
    timestamps in ``train_ts[u]``. ``val``/``test`` hold one item per user (``-1``: none), with
    ``val_negatives``/``test_negatives`` of shape ``(U, 99)``.
    """

    users: np.ndarray  # (U,)
    train: list[np.ndarray]
    train_ts: list[np.ndarray]
    val: np.ndarray  # (U,)
    test: np.ndarray  # (U,)
    val_negatives: np.ndarray  # (U, 99)
    test_negatives: np.ndarray  # (U, 99)
    num_items: int
    cold_items: np.ndarray | None = None  # rows held out of training (cold-start split)
    #: all of each user's interacted rows (for full ranking exclusion and cold relevance)
    seen: list[np.ndarray] | None = None

    @property
    def num_users(self) -> int:
        return int(self.users.shape[0])

    def negative_pool(self) -> np.ndarray | None:
        """The rows training may draw negatives from: the warm items on a cold-start split, else None (all).

        A cold item never appears in training, as a positive or as a negative (central and federated alike).
        """
        if self.cold_items is None:
            return None
        warm = np.ones(self.num_items, bool)
        warm[self.cold_items] = False
        return np.flatnonzero(warm)

    def num_train(self) -> int:
        return int(sum(len(t) for t in self.train))


def _by_user(inter: Interactions) -> dict[int, np.ndarray]:
    order = np.lexsort((np.arange(len(inter)), inter.timestamps, inter.users))  # stable by time
    users = inter.users[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    return {int(inter.users[g[0]]): g for g in np.split(order, bounds)} if len(order) else {}


def _sample_negatives(rng: np.random.Generator, pool: np.ndarray, exclude: set[int], n: int) -> np.ndarray:
    allowed = np.array([i for i in pool.tolist() if i not in exclude], dtype=np.int64)
    if len(allowed) < n:
        raise ValueError(f"only {len(allowed)} candidate negatives available, need {n}")
    return rng.choice(allowed, size=n, replace=False)


def p1_split(
    inter: Interactions, num_items: int, *, seed: int = 0, cold_fraction: float = 0.0, negatives: int = NUM_NEGATIVES
) -> Split:
    """Build the P1 split (``cold_fraction > 0``: the item cold-start variant), ``negatives`` per held-out item."""
    rng = np.random.default_rng(seed)
    all_rows = np.arange(num_items, dtype=np.int64)
    cold = np.zeros(num_items, bool)
    if cold_fraction > 0:
        present = np.unique(inter.items)
        cold[rng.choice(present, size=int(round(cold_fraction * len(present))), replace=False)] = True
    groups = _by_user(inter)
    users, train, train_ts, val, test, vneg, tneg, seen = [], [], [], [], [], [], [], []
    cold_pool = all_rows[cold]
    for u in sorted(groups):
        g = groups[u]
        items, ts = inter.items[g], inter.timestamps[g]
        exclude = set(items.tolist())
        if cold_fraction > 0:
            warm = ~cold[items]
            w_items, w_ts = items[warm], ts[warm]
            c_items = items[~warm]
            if len(w_items) < 2:
                continue
            train.append(w_items[:-1])
            train_ts.append(w_ts[:-1])
            val.append(w_items[-1])
            test.append(c_items[-1] if len(c_items) else -1)
            vneg.append(_sample_negatives(rng, all_rows[~cold], exclude, negatives))
            tneg.append(
                _sample_negatives(rng, cold_pool, exclude, negatives)
                if len(c_items)
                else np.full(negatives, -1, np.int64)
            )
        else:
            if len(items) < 3:
                continue
            train.append(items[:-2])
            train_ts.append(ts[:-2])
            val.append(items[-2])
            test.append(items[-1])
            vneg.append(_sample_negatives(rng, all_rows, exclude, negatives))
            tneg.append(_sample_negatives(rng, all_rows, exclude, negatives))
        users.append(u)
        seen.append(np.unique(items))
    return Split(
        users=np.array(users, np.int64),
        train=train,
        train_ts=train_ts,
        val=np.array(val, np.int64),
        test=np.array(test, np.int64),
        val_negatives=np.stack(vneg),
        test_negatives=np.stack(tneg),
        num_items=num_items,
        cold_items=all_rows[cold] if cold_fraction > 0 else None,
        seen=seen,
    )


def _fingerprint(inter: Interactions, num_items: int, seed: int, cold_fraction: float) -> str:
    h = hashlib.sha256()
    for a in (inter.users, inter.items, inter.timestamps):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps([num_items, seed, cold_fraction, NUM_NEGATIVES, "p1-v1"]).encode())
    return h.hexdigest()[:16]


def save_split(split: Split, path: Path) -> None:
    """Persist a split as one ``.npz`` (atomically)."""
    arrays: dict[str, np.ndarray] = {
        "users": split.users,
        "val": split.val,
        "test": split.test,
        "val_negatives": split.val_negatives,
        "test_negatives": split.test_negatives,
        "num_items": np.array(split.num_items),
        "train_len": np.array([len(t) for t in split.train]),
        "train": np.concatenate(split.train) if split.train else np.zeros(0, np.int64),
        "train_ts": np.concatenate(split.train_ts) if split.train else np.zeros(0, np.int64),
        "seen_len": np.array([len(s) for s in split.seen or []]),
        "seen": np.concatenate(split.seen) if split.seen else np.zeros(0, np.int64),
    }
    if split.cold_items is not None:
        arrays["cold_items"] = split.cold_items
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]


def load_split(path: Path) -> Split:
    """Load a split saved by :func:`save_split`; a damaged file is a :class:`DataError`."""
    try:
        z = np.load(path)
        cuts = np.cumsum(z["train_len"])[:-1]
        scuts = np.cumsum(z["seen_len"])[:-1]
        return Split(
            users=z["users"],
            train=list(np.split(z["train"], cuts)),
            train_ts=list(np.split(z["train_ts"], cuts)),
            val=z["val"],
            test=z["test"],
            val_negatives=z["val_negatives"],
            test_negatives=z["test_negatives"],
            num_items=int(z["num_items"]),
            cold_items=z["cold_items"] if "cold_items" in z.files else None,
            seen=list(np.split(z["seen"], scuts)) if len(z["seen_len"]) else None,
        )
    except (OSError, KeyError, ValueError) as e:
        raise DataError(path, f"damaged split file: {e}") from e


def cached_split(
    inter: Interactions, num_items: int, cache_dir: str | Path, *, seed: int = 0, cold_fraction: float = 0.0
) -> Split:
    """The split for these interactions, from ``cache_dir`` if persisted there, else built and saved."""
    kind = "cold" if cold_fraction > 0 else "p1"
    path = Path(cache_dir) / "splits" / f"{kind}-{_fingerprint(inter, num_items, seed, cold_fraction)}.npz"
    if path.exists():
        return load_split(path)
    split = p1_split(inter, num_items, seed=seed, cold_fraction=cold_fraction)
    save_split(split, path)
    return split


def partition_users(num_users: int, num_partitions: int) -> list[np.ndarray]:
    """Split user positions ``0..num_users-1`` into ``num_partitions`` contiguous groups.

    ``num_partitions == num_users`` is one user per client (the default).
    """
    if not 1 <= num_partitions <= num_users:
        raise ValueError(f"num_partitions must be in [1, {num_users}], got {num_partitions}")
    return list(np.array_split(np.arange(num_users), num_partitions))
