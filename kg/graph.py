"""Build, save and load the catalogue knowledge graph (a networkx ``MultiDiGraph``).

Node ids are strings ``"<type>:<key>"`` so that they survive JSON unchanged:

* items: ``item:<id>`` (``item:1``), with attributes ``item_id``, ``title``, ``year``;
* genres: ``genre:<name>`` (``genre:Comedy``); decades: ``decade:<label>`` (``decade:1990s``);
* DBpedia entities: ``person:<uri>``, ``company:<uri>``, ``category:<uri>``, the type coming from
  the relation's declared tail type (:data:`kg.schema.RELATIONS`).

Every node has ``type`` and a readable ``label``. Every edge goes from an item to an entity and its
key is the relation name, so a path reads as ``(head, relation, tail)`` triples. Users are never
nodes. Files are versioned node-link JSON carrying a fingerprint of the catalogue they were built
from, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import networkx as nx

from kg.errors import (
    CatalogueMismatchError,
    DuplicateItemError,
    InvalidItemError,
    KGFileError,
    KGVersionError,
    UnknownItemError,
)
from kg.schema import (
    ENTITY_RELATIONS,
    ENTITY_TYPES,
    HAS_GENRE,
    ITEM,
    RELATIONS,
    RELEASED_IN_DECADE,
    decade_of,
    display_title,
    entity_label,
)

log = logging.getLogger(__name__)

FILE_FORMAT = "fedxrec-kg"
FORMAT_VERSION = 1

UnknownRelations = Literal["error", "skip"]


class CatalogueItem(Protocol):
    """What the graph needs of an item (``shared.data.Item`` fits; so does a dict with these keys)."""

    @property
    def id(self) -> int: ...
    @property
    def title(self) -> str: ...
    @property
    def year(self) -> int | None: ...
    @property
    def genres(self) -> Sequence[str]: ...
    @property
    def entities(self) -> Mapping[str, Sequence[str]]: ...


ItemLike = CatalogueItem | Mapping[str, Any]


@dataclass(frozen=True)
class ItemRecord:
    """A validated item: what one catalogue entry contributes to the graph."""

    id: int
    title: str
    year: int | None
    genres: tuple[str, ...]
    entities: tuple[tuple[str, tuple[str, ...]], ...]  # (relation, entities) in input order


# ----------------------------------------------------------------------------------- node ids


def item_node(item_id: int) -> str:
    """Node id of an item: ``item_node(1) == "item:1"``."""
    return f"{ITEM}:{item_id}"


def entity_node(entity_type: str, key: str) -> str:
    """Node id of a non-item entity: ``entity_node("person", uri) == "person:" + uri``."""
    return f"{entity_type}:{key}"


def require_item(graph: nx.MultiDiGraph, item_id: int) -> str:
    """Node id of ``item_id``; raises :class:`UnknownItemError` (naming the id) if it is absent."""
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise UnknownItemError(item_id)
    node = item_node(item_id)
    if node not in graph:
        raise UnknownItemError(item_id)
    return node


def item_ids(graph: nx.MultiDiGraph) -> list[int]:
    """Ids of the items in the graph, in insertion order."""
    return [d["item_id"] for _, d in graph.nodes(data=True) if d["type"] == ITEM]


def item_label(graph: nx.MultiDiGraph, node: str) -> str:
    """Readable label of a node (``Toy Story (1995)`` for an item)."""
    return str(graph.nodes[node]["label"])


# ------------------------------------------------------------------------------- item records


def _field(obj: ItemLike, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _strings(item_id: object, what: str, values: Any) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidItemError(item_id, f"{what} must be a list of strings, got {type(values).__name__}")
    out = tuple(v.strip() for v in values if isinstance(v, str))
    if len(out) != len(values) or not all(out):
        raise InvalidItemError(item_id, f"{what} must hold non-empty strings only")
    return out


def item_record(obj: ItemLike) -> ItemRecord:
    """Validate one item (an object with ``id, title, year, genres, entities`` or such a dict).

    Raises
    ------
    InvalidItemError
        If a field is missing or ill-typed (the message names the item id and the field).
    """
    item_id = _field(obj, "id")
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise InvalidItemError(item_id, "id must be an int")
    title = _field(obj, "title")
    if not isinstance(title, str) or not title.strip():
        raise InvalidItemError(item_id, "title must be a non-empty string")
    year = _field(obj, "year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
        raise InvalidItemError(item_id, f"year must be an int or None, got {year!r}")
    genres = _strings(item_id, "genres", _field(obj, "genres", ()))
    raw = _field(obj, "entities", {}) or {}
    if not isinstance(raw, Mapping):
        raise InvalidItemError(item_id, "entities must map relation -> list of entities")
    entities = tuple((str(r), _strings(item_id, f"entities[{r!r}]", v)) for r, v in raw.items())
    return ItemRecord(item_id, title.strip(), year, genres, entities)


def _link(graph: nx.MultiDiGraph, head: str, relation: str, key: str, label: str) -> None:
    tail_type = RELATIONS[relation].tail
    tail = entity_node(tail_type, key)
    if tail not in graph:
        graph.add_node(tail, type=tail_type, label=label)
    graph.add_edge(head, tail, key=relation)


def insert_item(
    graph: nx.MultiDiGraph, rec: ItemRecord, *, unknown_relations: UnknownRelations = "error"
) -> Counter[str]:
    """Add one validated item, its genre/decade/entity nodes and edges; return skipped relations.

    Raises
    ------
    DuplicateItemError
        If the item is already in the graph.
    InvalidItemError
        If an entity relation is not in the schema and ``unknown_relations == "error"``.
    """
    node = item_node(rec.id)
    if node in graph:
        raise DuplicateItemError(rec.id)
    skipped: Counter[str] = Counter()
    for relation, ents in rec.entities:
        if relation not in ENTITY_RELATIONS:
            if unknown_relations == "error":
                raise InvalidItemError(rec.id, f"relation {relation!r} is not one of {ENTITY_RELATIONS}")
            skipped[relation] += len(ents)
    shown = display_title(rec.title)
    label = f"{shown} ({rec.year})" if rec.year is not None else shown
    graph.add_node(node, type=ITEM, label=label, item_id=rec.id, title=rec.title, year=rec.year)
    for genre in rec.genres:
        _link(graph, node, HAS_GENRE, genre, genre)
    if rec.year is not None:
        decade = decade_of(rec.year)
        _link(graph, node, RELEASED_IN_DECADE, decade, decade)
    for relation, ents in rec.entities:
        if relation in ENTITY_RELATIONS:
            for ent in ents:
                _link(graph, node, relation, ent, entity_label(ent))
    return skipped


def build_graph(items: Iterable[ItemLike], *, unknown_relations: UnknownRelations = "error") -> nx.MultiDiGraph:
    """Build the knowledge graph of a catalogue.

    Parameters
    ----------
    items
        Catalogue items (``shared.data.Item`` objects, or dicts with the same keys).
    unknown_relations
        ``"error"`` (default) rejects an entity relation outside the schema; ``"skip"`` drops those
        links and logs how many were dropped per relation.

    Raises
    ------
    InvalidItemError
        On an ill-formed item, a duplicate id, or (by default) an unknown relation.
    """
    if unknown_relations not in ("error", "skip"):
        raise ValueError(f"unknown_relations must be 'error' or 'skip', got {unknown_relations!r}")
    graph = nx.MultiDiGraph(kind=FILE_FORMAT)
    skipped: Counter[str] = Counter()
    for obj in items:
        skipped += insert_item(graph, item_record(obj), unknown_relations=unknown_relations)
    if skipped:
        log.warning("KG build skipped links of relations outside the schema: %s", dict(skipped))
    log.info(
        "KG built: %d items, %d nodes, %d edges",
        len(item_ids(graph)),
        graph.number_of_nodes(),
        graph.number_of_edges(),
    )
    graph_stats(graph)  # warm the cache so the first explanation is not the slow one
    return graph


# ---------------------------------------------------------------------------------- fingerprint


def catalogue_fingerprint(items: Iterable[ItemLike]) -> str:
    """SHA-256 of the sorted ``(id, title)`` pairs of a catalogue (what a saved graph is tied to)."""
    pairs = sorted((int(_field(it, "id")), str(_field(it, "title")).strip()) for it in items)
    return _digest(pairs)


def graph_fingerprint(graph: nx.MultiDiGraph) -> str:
    """Fingerprint of the catalogue held by ``graph`` (equal to :func:`catalogue_fingerprint`)."""
    pairs = sorted((d["item_id"], d["title"]) for _, d in graph.nodes(data=True) if d["type"] == ITEM)
    return _digest(pairs)


def _digest(pairs: list[tuple[int, str]]) -> str:
    h = hashlib.sha256()
    for item_id, title in pairs:
        h.update(f"{item_id}\t{title}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class GraphStats:
    """Counts used to score entities and paths: items, the largest entity degree per type, relations present."""

    n_items: int
    max_degree: dict[str, int]  # entity type -> largest number of items linked to one entity
    relations: frozenset[str]  # relations with at least one edge (the path types this KG can show)


_STATS: weakref.WeakKeyDictionary[nx.MultiDiGraph, tuple[int, GraphStats]] = weakref.WeakKeyDictionary()


def entity_degree(graph: nx.MultiDiGraph, node: str) -> int:
    """Number of distinct items linked to an entity (whatever the relations)."""
    return len(graph.pred[node])


def graph_stats(graph: nx.MultiDiGraph) -> GraphStats:
    """Statistics of ``graph``, cached until its node count changes.

    Items only enter through :func:`insert_item`, which always adds a node, so the node count is a
    cheap change signature (``number_of_edges`` is O(E) in networkx).
    """
    signature = graph.number_of_nodes()
    cached = _STATS.get(graph)
    if cached is not None and cached[0] == signature:
        return cached[1]
    n_items = 0
    max_degree: dict[str, int] = {}
    relations: set[str] = set()
    for node, d in graph.nodes(data=True):
        if d["type"] == ITEM:
            n_items += 1
            for keys in graph.succ[node].values():
                relations.update(keys)
        else:
            max_degree[d["type"]] = max(max_degree.get(d["type"], 0), len(graph.pred[node]))
    stats = GraphStats(n_items, max_degree, frozenset(relations))
    _STATS[graph] = (signature, stats)
    return stats


# ------------------------------------------------------------------------------------ save/load


def save_graph(graph: nx.MultiDiGraph, path: str | Path) -> Path:
    """Write ``graph`` as versioned node-link JSON, atomically (temp file + ``os.replace``)."""
    path = Path(path)
    payload = {
        "format": FILE_FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": graph_fingerprint(graph),
        "graph": nx.node_link_data(graph, edges="edges"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a saved graph is public catalogue data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("KG saved to %s", path)
    return path


def load_graph(
    path: str | Path, *, catalogue: Iterable[ItemLike] | None = None, fingerprint: str | None = None
) -> nx.MultiDiGraph:
    """Load a graph written by :func:`save_graph` and check it against the catalogue in use.

    Parameters
    ----------
    path
        The JSON file.
    catalogue, fingerprint
        The catalogue in use (or its :func:`catalogue_fingerprint`); if given, the file must have
        been built from the same catalogue.

    Raises
    ------
    KGFileError
        If the file is missing, not JSON (the line is named), or not a well-formed graph.
    KGVersionError
        If the file has another format version.
    CatalogueMismatchError
        If the file was built from another catalogue.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KGFileError(path, f"cannot read: {e}") from e
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise KGFileError(path, f"not valid JSON: {e.msg}", e.lineno) from e
    graph = _graph_from_payload(path, payload)
    stored = graph_fingerprint(graph)
    if payload["fingerprint"] != stored:
        raise KGFileError(path, "stored fingerprint does not match the items in the file (edited or damaged)")
    expected = catalogue_fingerprint(catalogue) if catalogue is not None else fingerprint
    if expected is not None and expected != stored:
        raise CatalogueMismatchError(
            path, f"built from another catalogue (fingerprint {stored[:12]}…, expected {expected[:12]}…)"
        )
    graph_stats(graph)
    return graph


def _graph_from_payload(path: Path, payload: Any) -> nx.MultiDiGraph:
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise KGFileError(path, f"not a {FILE_FORMAT} file (no 'format': '{FILE_FORMAT}')")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise KGVersionError(path, f"format version {version!r}, this code reads version {FORMAT_VERSION}")
    data = payload.get("graph")
    if not isinstance(payload.get("fingerprint"), str) or not isinstance(data, dict):
        raise KGFileError(path, "missing 'fingerprint' or 'graph'")
    if data.get("directed") is not True or data.get("multigraph") is not True:
        raise KGFileError(path, "graph must be a directed multigraph")
    try:
        graph = nx.node_link_graph(data, directed=True, multigraph=True, edges="edges")
    except (KeyError, TypeError, ValueError, nx.NetworkXError) as e:
        raise KGFileError(path, f"malformed node-link data: {e!r}") from e
    _validate(path, graph)
    return graph


def _validate(path: Path, graph: nx.MultiDiGraph) -> None:
    for node, d in graph.nodes(data=True):
        kind = d.get("type")
        if kind not in ENTITY_TYPES or not isinstance(d.get("label"), str):
            raise KGFileError(path, f"node {node!r}: bad or missing 'type'/'label'")
        if kind == ITEM:
            item_id = d.get("item_id")
            consistent = isinstance(item_id, int) and node == item_node(item_id)
            if not consistent or not isinstance(d.get("title"), str):
                raise KGFileError(path, f"item node {node!r}: 'item_id'/'title' missing or inconsistent")
    for head, tail, relation in graph.edges(keys=True):
        spec = RELATIONS.get(relation)
        if spec is None or (graph.nodes[head]["type"], graph.nodes[tail]["type"]) != tuple(spec):
            raise KGFileError(path, f"edge ({head!r}, {relation!r}, {tail!r}) does not fit the schema")


__all__ = [
    "CatalogueItem",
    "GraphStats",
    "ItemLike",
    "ItemRecord",
    "build_graph",
    "catalogue_fingerprint",
    "entity_degree",
    "entity_node",
    "graph_fingerprint",
    "graph_stats",
    "insert_item",
    "item_ids",
    "item_label",
    "item_node",
    "item_record",
    "load_graph",
    "require_item",
    "save_graph",
]
