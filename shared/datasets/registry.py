"""Datasets by name: ``load_dataset("ml-100k")``, ``load_dataset("ml-latest-small")``.

A loader takes the data directory (and keyword options of its own) and returns a :class:`Dataset`.
A name that is not registered still loads when ``data_dir/<name>`` is a MovieLens CSV release.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.datasets.core import Dataset, default_data_dir
from shared.datasets.enrichment import enrich
from shared.datasets.entity2rec import ENTITY2REC_DIR, read_entity2rec
from shared.datasets.ml100k import load_ml100k
from shared.datasets.movielens_csv import load_movielens_csv
from shared.errors import DataError

log = logging.getLogger(__name__)

Loader = Callable[..., Dataset]  # (data_dir: Path, **options) -> Dataset


def _ml100k(data_dir: Path, **kwargs: Any) -> Dataset:
    if not (data_dir / "ml-100k" / "u.data").exists():
        from shared.download import download_ml100k

        download_ml100k(data_dir)
    return load_ml100k(data_dir, **kwargs)


def _ml_latest_small(data_dir: Path) -> Dataset:
    """ml-latest-small with the entity2rec DBpedia KG (``kg/entity2rec-ml1m-dbpedia``) where present.

    Generic ``triples.tsv`` / ``abstracts.tsv`` in ``ml-latest-small/`` are applied as well.
    """
    ds = load_movielens_csv(data_dir / "ml-latest-small", name="ml-latest-small")
    kg_dir = data_dir / ENTITY2REC_DIR
    if kg_dir.is_dir():
        enrich(ds.catalogue, read_entity2rec(kg_dir), (), source=kg_dir)
    else:
        log.warning("no entity2rec KG at %s: items carry what ml-latest-small/ holds", kg_dir)
    return ds


_LOADERS: dict[str, Loader] = {"ml-100k": _ml100k, "ml-latest-small": _ml_latest_small}


def register(name: str, loader: Loader) -> None:
    """Register ``loader`` under ``name``; raises ``ValueError`` if the name is taken."""
    if name in _LOADERS:
        raise ValueError(f"dataset {name!r} is already registered")
    _LOADERS[name] = loader


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names."""
    return tuple(_LOADERS)


def load_dataset(name: str = "ml-100k", data_dir: str | Path | None = None, **kwargs: Any) -> Dataset:
    """Load a dataset by name from the data directory (downloading ml-100k where it is missing).

    Raises
    ------
    DataError
        For a name neither registered nor a MovieLens CSV directory, or naming a bad file and line.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    loader = _LOADERS.get(name)
    if loader is not None:
        return loader(data_dir, **kwargs)
    path = data_dir / name
    if (path / "ratings.csv").exists():
        return load_movielens_csv(path, name=name)
    raise DataError(path, f"unknown dataset {name!r}: not one of {dataset_names()} and no ratings.csv")
