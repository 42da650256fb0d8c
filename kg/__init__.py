"""fedxrec kg: the public catalogue as a knowledge graph, cold-start priors and path explanations.

Pure networkx + numpy: nothing here imports torch, flwr, fastapi or :mod:`shared`.
"""

from kg.coldstart import add_item, neighbour_prior, neighbours
from kg.errors import (
    CatalogueMismatchError,
    DuplicateItemError,
    InvalidItemError,
    KGError,
    KGFileError,
    KGVersionError,
    NoNeighboursError,
    UnknownItemError,
)
from kg.explainer import PathExplainer
from kg.graph import (
    build_graph,
    catalogue_fingerprint,
    graph_fingerprint,
    item_node,
    load_graph,
    save_graph,
)
from kg.metrics import (
    can_enter_top_k,
    entity_share,
    etd,
    explanation_metrics,
    faithfulness,
    fidelity,
    fidelity_specific,
    first_path_kinds,
    lir,
    pn_rank,
    pn_score,
    rerank,
    sep,
    sep_table,
    toward_entities,
)
from kg.paths import Explanation, Path, PathScoring, Triple, explain, explain_items, find_paths
from kg.schema import entity_label

__all__ = [
    "CatalogueMismatchError",
    "DuplicateItemError",
    "Explanation",
    "InvalidItemError",
    "KGError",
    "KGFileError",
    "KGVersionError",
    "NoNeighboursError",
    "Path",
    "PathExplainer",
    "PathScoring",
    "Triple",
    "UnknownItemError",
    "add_item",
    "build_graph",
    "catalogue_fingerprint",
    "entity_label",
    "entity_share",
    "etd",
    "explain",
    "explain_items",
    "explanation_metrics",
    "faithfulness",
    "fidelity",
    "fidelity_specific",
    "find_paths",
    "first_path_kinds",
    "graph_fingerprint",
    "item_node",
    "lir",
    "load_graph",
    "neighbour_prior",
    "neighbours",
    "pn_rank",
    "pn_score",
    "can_enter_top_k",
    "rerank",
    "toward_entities",
    "save_graph",
    "sep",
    "sep_table",
]
