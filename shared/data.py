"""Datasets: a facade over :mod:`shared.datasets`, kept so ``from shared.data import ...`` still works.

Readers exist for MovieLens-100K (``u.data``, ``u.item`` in latin-1, ``u.genre``, with the
FranKGraphBench DBpedia ``enriched.csv``), for the MovieLens CSV releases (``ratings.csv``,
``movies.csv``, optional ``links.csv``; ``tags.csv``, users' own tags, is behaviour data and never
read), and for the entity2rec DBpedia KG that ml-latest-small is loaded with. Item enrichment uses
one generic format any dataset can supply:

* ``triples.tsv``: ``item_id <TAB> relation <TAB> entity`` (entity: a URI or a label), one per line;
* ``abstracts.tsv``: ``item_id <TAB> text``.

Relations outside :data:`RELATION_VOCABULARY` are skipped with one warning per file. Every reader
raises :class:`~shared.errors.DataError` naming the file and line on bad input. New code may import
from :mod:`shared.datasets` directly.
"""

from __future__ import annotations

from shared.datasets.core import (
    Catalogue,
    Dataset,
    Interactions,
    Item,
    RatingRow,
    default_data_dir,
    entity_label,
)
from shared.datasets.core import map_interactions as _interactions
from shared.datasets.enrichment import (
    RELATION_NAMES,
    RELATION_VOCABULARY,
    enrich,
    read_abstracts,
    read_triples,
    relation_name,
)
from shared.datasets.entity2rec import read_entity2rec
from shared.datasets.ml100k import (
    DEFAULT_KG_VERSION,
    KG_VERSIONS,
    load_ml100k,
    read_frankgraphbench,
    read_ml100k_genres,
    read_ml100k_items,
    read_ml100k_ratings,
)
from shared.datasets.movielens_csv import (
    load_movielens_csv,
    read_movielens_csv_items,
    read_movielens_csv_links,
    read_movielens_csv_ratings,
)
from shared.datasets.registry import dataset_names, load_dataset

#: Former name of :data:`RELATION_VOCABULARY`.
DBPEDIA_RELATIONS = RELATION_VOCABULARY

__all__ = [
    "DBPEDIA_RELATIONS",
    "DEFAULT_KG_VERSION",
    "KG_VERSIONS",
    "RELATION_NAMES",
    "RELATION_VOCABULARY",
    "Catalogue",
    "Dataset",
    "Interactions",
    "Item",
    "RatingRow",
    "_interactions",
    "dataset_names",
    "default_data_dir",
    "enrich",
    "entity_label",
    "load_dataset",
    "load_ml100k",
    "load_movielens_csv",
    "read_abstracts",
    "read_entity2rec",
    "read_frankgraphbench",
    "read_ml100k_genres",
    "read_ml100k_items",
    "read_ml100k_ratings",
    "read_movielens_csv_items",
    "read_movielens_csv_links",
    "read_movielens_csv_ratings",
    "read_triples",
    "relation_name",
]
