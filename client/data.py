"""A node's data: its users' P1 splits plus the shared catalogue's cached item features.

Two sources:

* **simulation**: ``partition-id`` / ``num-partitions`` pick a contiguous group of the dataset's users
  (one user per node when ``num-partitions`` equals the number of users);
* **real device**: ``data-path`` is the device's own interactions file (``u.data`` tab format or a
  MovieLens ``ratings.csv``) and ``catalog-path`` the shared public catalogue (see
  :func:`load_catalogue`) under which the item-feature cache lives (``items/``; built there on first use).

Both are cached per process: simulation workers are reused across thousands of calls, so loading the
dataset and the item cache must happen once, not per message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from client.config import NodeSpec
from shared.backbone import PrefixCache, cached_prefix, load_backbone
from shared.config import Config
from shared.data import (
    DEFAULT_KG_VERSION,
    Catalogue,
    _interactions,
    enrich,
    read_frankgraphbench,
    read_ml100k_genres,
    read_ml100k_items,
    read_ml100k_ratings,
    read_movielens_csv_items,
    read_movielens_csv_ratings,
)
from shared.datasets.enrichment import enrich_from_dir
from shared.datasets.entity2rec import read_entity2rec
from shared.datasets.registry import load_dataset
from shared.errors import DataError
from shared.pipeline import Prepared, prepare
from shared.splits import Split, p1_split, partition_users

log = logging.getLogger(__name__)


@dataclass
class NodeData:
    """The users held by one node (positions ``0..U-1`` locally) and the item features."""

    split: Split
    cache: PrefixCache
    backbone: nn.Module | None

    @property
    def num_users(self) -> int:
        return self.split.num_users

    @property
    def num_items(self) -> int:
        return self.cache.num_items

    def num_train(self) -> int:
        return self.split.num_train()


_PREPARED: dict[tuple[object, ...], Prepared] = {}
_DEVICE: dict[tuple[object, ...], NodeData] = {}
_NODES: dict[tuple[object, ...], NodeData] = {}


def _prepared(cfg: Config) -> Prepared:
    key = (repr(cfg.data), cfg.model.backbone, cfg.model.top_layers, cfg.model.max_length)
    if key not in _PREPARED:
        _PREPARED[key] = prepare(cfg, progress=False)
    return _PREPARED[key]


def subset_split(split: Split, positions: np.ndarray) -> Split:
    """The rows ``positions`` of a split (a node's users), as a split of its own."""
    idx = positions.tolist()
    return Split(
        users=split.users[positions],
        train=[split.train[i] for i in idx],
        train_ts=[split.train_ts[i] for i in idx],
        val=split.val[positions],
        test=split.test[positions],
        val_negatives=split.val_negatives[positions],
        test_negatives=split.test_negatives[positions],
        num_items=split.num_items,
        cold_items=split.cold_items,
        seen=[split.seen[i] for i in idx] if split.seen is not None else None,
    )


def load_node_data(spec: NodeSpec, cfg: Config) -> NodeData:
    """Load the node's data; raises :class:`DataError` naming a missing or malformed file."""
    if spec.data_path is not None:
        assert spec.catalog_path is not None
        key = (spec.data_path, spec.catalog_path, cfg.data.split_seed, cfg.model.backbone, cfg.model.top_layers)
        if key not in _DEVICE:
            _DEVICE[key] = _device_data(Path(spec.data_path), Path(spec.catalog_path), cfg)
        return _DEVICE[key]
    assert spec.partition_id is not None and spec.num_partitions is not None
    nkey = (repr(cfg.data), cfg.model.backbone, cfg.model.top_layers, spec.partition_id, spec.num_partitions)
    if nkey not in _NODES:
        _NODES[nkey] = _partition_data(spec.partition_id, spec.num_partitions, cfg)
    return _NODES[nkey]


def _partition_data(partition_id: int, num_partitions: int, cfg: Config) -> NodeData:
    prep = _prepared(cfg)
    if num_partitions > prep.split.num_users:
        raise DataError(
            prep.cache_path,
            f"num-partitions {num_partitions} exceeds the dataset's {prep.split.num_users} users",
        )
    positions = partition_users(prep.split.num_users, num_partitions)[partition_id]
    return NodeData(subset_split(prep.split, positions), prep.cache, prep.backbone)


def load_catalogue(root: Path, kg_version: str = DEFAULT_KG_VERSION, dataset: str = "ml-100k") -> Catalogue:
    """The public catalogue, with the same texts and KG the server builds for ``dataset``.

    ``root`` is either a data directory (``ml-100k/`` and ``kg/``, or ``<dataset>/`` and ``kg/``: the
    catalogue is then exactly the server's, its KG included) or one catalogue directory: ``u.item`` +
    ``u.genre`` [+ ``enriched.csv``], or ``movies.csv`` [+ ``triples.tsv`` / ``abstracts.tsv``, + an
    entity2rec KG (``mappings.tsv`` and ``graphs/``)].
    """
    if (root / "ml-100k" / "u.item").exists() and dataset == "ml-100k":  # a data directory root
        enriched = root / "kg" / "frankgraphbench-ml100k-dbpedia" / kg_version / "enriched.csv"
        root = root / "ml-100k"
    elif (root / dataset / "movies.csv").exists():  # a data directory root: the registry's loader
        return load_dataset(dataset, root).catalogue
    else:
        enriched = root / "enriched.csv"
    if (root / "u.item").exists():
        genres = read_ml100k_genres(root / "u.genre")
        cat = Catalogue(read_ml100k_items(root / "u.item", genres), [g for g in genres if g != "unknown"])
        if enriched.exists():
            enrich(cat, *read_frankgraphbench(enriched))
        return cat
    if (root / "movies.csv").exists():
        items, genres = read_movielens_csv_items(root / "movies.csv")
        cat = Catalogue(items, genres)
        enrich_from_dir(cat, root)
        if (root / "mappings.tsv").exists():
            enrich(cat, read_entity2rec(root), (), source=root)
        return cat
    raise DataError(
        root, f"no catalogue here: expected u.item + u.genre, movies.csv, or a data directory with {dataset}/"
    )


def read_device_ratings(path: Path) -> tuple[np.ndarray, ...]:
    """A device's interactions file, in the ``u.data`` or the ``ratings.csv`` format."""
    if not path.is_file():
        raise DataError(path, "file not found")
    with open(path, encoding="latin-1") as fh:
        head = fh.readline()
    return read_movielens_csv_ratings(path) if head.startswith("userId") else read_ml100k_ratings(path)


def _device_data(data_path: Path, catalog_path: Path, cfg: Config) -> NodeData:
    if not data_path.is_file():
        raise DataError(data_path, "the device's interactions file (node_config data-path) was not found")
    if not catalog_path.is_dir():
        raise DataError(catalog_path, "catalogue directory not found")
    cat = load_catalogue(catalog_path, cfg.data.kg_version, cfg.data.dataset)
    inter = _interactions(cat, data_path, read_device_ratings(data_path))
    users = np.unique(inter.users)
    counts = np.array([(inter.users == u).sum() for u in users])
    if (counts < 3).any():
        raise DataError(data_path, f"user {int(users[counts < 3][0])} has fewer than 3 interactions (P1 needs 3)")
    split = p1_split(inter, len(cat), seed=cfg.data.split_seed)
    backbone, tok = load_backbone(cfg.model.backbone)
    cache, _ = cached_prefix(
        cfg.model.backbone,
        cat.texts(),
        catalog_path,
        top_layers=cfg.model.top_layers,
        max_length=cfg.model.max_length,
        model=backbone,
        tok=tok,
        progress=False,
    )
    log.info("device data: %d users, %d interactions, %d items", len(users), len(inter), len(cat))
    return NodeData(split, cache, backbone if cfg.model.top_layers > 0 else None)
