from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.data import Interactions, load_ml100k
from shared.splits import cached_split, p1_split, partition_users


def _inter(rows: list[tuple[int, int, int]]) -> Interactions:
    u, i, t = (np.array(x, np.int64) for x in zip(*rows, strict=True))
    return Interactions(u, i, np.ones(len(u), np.float32), t)


def test_p1_stable_time_sort_and_negatives() -> None:
    # user 1: items 5,6 share timestamp 20 -> file order decides (6 after 5); latest is test
    rows = [(1, 3, 10), (1, 6, 20), (1, 5, 20), (1, 9, 30), (1, 4, 5), (2, 1, 1), (2, 2, 2), (2, 3, 3)]
    s = p1_split(_inter(rows), 120, seed=0)
    assert s.users.tolist() == [1, 2]
    assert s.train[0].tolist() == [4, 3, 6] and s.val[0] == 5 and s.test[0] == 9
    assert s.val_negatives.shape == (2, 99)
    for u, seen in enumerate(s.seen or []):
        assert not set(s.test_negatives[u]) & set(seen.tolist())
        assert len(set(s.test_negatives[u].tolist())) == 99


def test_split_is_seeded_and_persisted(tiny_data: Path, tmp_path: Path) -> None:
    ds = load_ml100k(tiny_data)
    a = cached_split(ds.interactions, len(ds.catalogue), tmp_path, seed=3)
    files = list((tmp_path / "splits").glob("p1-*.npz"))
    assert len(files) == 1
    b = cached_split(ds.interactions, len(ds.catalogue), tmp_path, seed=3)
    assert np.array_equal(a.test_negatives, b.test_negatives)
    assert all(np.array_equal(x, y) for x, y in zip(a.train, b.train, strict=True))
    c = p1_split(ds.interactions, len(ds.catalogue), seed=4)
    assert not np.array_equal(a.test_negatives, c.test_negatives)


def test_cold_start_split_keeps_cold_items_out_of_training(tiny_data: Path) -> None:
    ds = load_ml100k(tiny_data)
    s = p1_split(ds.interactions, len(ds.catalogue), seed=0, cold_fraction=0.5, negatives=5)
    assert s.cold_items is not None and len(s.cold_items) > 0
    cold = set(s.cold_items.tolist())
    assert not cold & set(np.concatenate(s.train).tolist())
    assert all(v not in cold for v in s.val.tolist())
    for u in range(s.num_users):
        if s.test[u] >= 0:
            assert s.test[u] in cold
            assert set(s.test_negatives[u].tolist()) <= cold


def test_partitions_cover_users_once() -> None:
    parts = partition_users(10, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert len(partition_users(10, 10)) == 10
