"""Datasets: interactions, the public item catalogue, and its enrichment (KG triples, abstracts).

One module per source format, each a reader plus a loader; :func:`load_dataset` finds them by name.

* :mod:`~shared.datasets.core`: :class:`Item`, :class:`Catalogue`, :class:`Interactions`,
  :class:`Dataset` and the line/field helpers (every reader raises
  :class:`~shared.errors.DataError` naming the file and line on bad input);
* :mod:`~shared.datasets.enrichment`: generic ``triples.tsv`` / ``abstracts.tsv``, :func:`enrich`
  and the relation vocabulary (source predicate -> our relation name);
* :mod:`~shared.datasets.ml100k`: MovieLens-100K and its FranKGraphBench ``enriched.csv``;
* :mod:`~shared.datasets.movielens_csv`: MovieLens CSV releases (``tags.csv`` is never read);
* :mod:`~shared.datasets.entity2rec`: the entity2rec DBpedia KG (``mappings.tsv`` + edgelists);
* :mod:`~shared.datasets.registry`: name -> loader.
"""

from shared.datasets.core import Catalogue, Dataset, Interactions, Item, default_data_dir, entity_label
from shared.datasets.enrichment import RELATION_NAMES, RELATION_VOCABULARY, enrich, read_abstracts, read_triples
from shared.datasets.entity2rec import read_entity2rec
from shared.datasets.ml100k import DEFAULT_KG_VERSION, KG_VERSIONS, load_ml100k, read_frankgraphbench
from shared.datasets.movielens_csv import load_movielens_csv
from shared.datasets.registry import dataset_names, load_dataset, register

__all__ = [
    "DEFAULT_KG_VERSION",
    "KG_VERSIONS",
    "RELATION_NAMES",
    "RELATION_VOCABULARY",
    "Catalogue",
    "Dataset",
    "Interactions",
    "Item",
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
    "read_triples",
    "register",
]
