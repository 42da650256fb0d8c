"""Item enrichment any dataset can supply, and the vocabulary that names its relations.

Generic files (in a dataset's directory):

* ``triples.tsv``: ``item_id <TAB> relation <TAB> entity`` (entity: a URI or a label), one per line;
* ``abstracts.tsv``: ``item_id <TAB> text``.

``#`` lines and blank lines are skipped. A relation is given either by our name (``director``), by a
source predicate of :data:`RELATION_VOCABULARY` (``dbo:director``, ``dbo:musicComposer``) or by that
predicate's full URI (``http://dbpedia.org/ontology/director``). Every reader of relations (these
files, FranKGraphBench columns, entity2rec edgelists) treats one outside the vocabulary the same way:
its triples are skipped with one warning per file naming the file, the relations and their counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from shared.datasets.core import Catalogue, lines, parse_int
from shared.errors import DataError

log = logging.getLogger(__name__)

Triple = tuple[int, str, str]  # (item id, relation, entity)

#: Source predicate -> our relation name (the entity relations of ``kg.schema``; a test checks they agree).
RELATION_VOCABULARY: Mapping[str, str] = MappingProxyType(
    {
        "dbo:director": "director",
        "dbo:starring": "starring",
        "dbo:writer": "writer",
        "dbo:producer": "producer",
        "dbo:musicComposer": "composer",
        "dbo:cinematography": "cinematography",
        "dbo:editing": "editor",
        "dbo:distributor": "distributor",
        "dct:subject": "subject",
    }
)
#: Our relation names, in the vocabulary's order.
RELATION_NAMES: tuple[str, ...] = tuple(dict.fromkeys(RELATION_VOCABULARY.values()))
#: Namespace URI -> the prefix the vocabulary uses.
NAMESPACES: Mapping[str, str] = MappingProxyType(
    {"http://dbpedia.org/ontology/": "dbo:", "http://purl.org/dc/terms/": "dct:"}
)


def relation_name(source: str) -> str | None:
    """Our name for a source relation (ours, ``dbo:director`` or its full URI); ``None`` if outside the vocabulary."""
    source = source.strip()
    if source in RELATION_NAMES:
        return source
    for uri, prefix in NAMESPACES.items():
        if source.startswith(uri):
            source = prefix + source[len(uri) :]
            break
    return RELATION_VOCABULARY.get(source)


def warn_unknown_relations(path: Path | str, skipped: Mapping[str, int]) -> None:
    """The one warning a reader logs for a file's relations outside the vocabulary (nothing if none)."""
    if skipped:
        log.warning(
            "%s: relations not in the vocabulary, their triples skipped: %s (known: %s)",
            path,
            dict(skipped),
            ", ".join(RELATION_VOCABULARY),
        )


def read_triples(path: Path) -> Iterator[Triple]:
    """Read the generic triples file, yielding ``(item_id, our relation, entity)``.

    Raises
    ------
    DataError
        Naming the file and line of a line that is not ``item_id<TAB>relation<TAB>entity``.
    """
    skipped: Counter[str] = Counter()
    for n, line in lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split("\t")
        if len(f) != 3 or not f[1] or not f[2]:
            raise DataError(path, "expected 'item_id<TAB>relation<TAB>entity'", n)
        item = parse_int(f[0], path, n, "item id")
        rel = relation_name(f[1])
        if rel is None:
            skipped[f[1]] += 1
            continue
        yield item, rel, f[2]
    warn_unknown_relations(path, skipped)


def read_abstracts(path: Path) -> Iterator[tuple[int, str]]:
    """Read the generic abstracts file: ``item_id <TAB> text``; raises :class:`DataError` naming file and line."""
    for n, line in lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        item, sep, text = line.partition("\t")
        if not sep:
            raise DataError(path, "expected 'item_id<TAB>text'", n)
        yield parse_int(item, path, n, "item id"), text


def enrich(
    catalogue: Catalogue,
    triples: Iterable[Triple],
    abstracts: Iterable[tuple[int, str]],
    *,
    source: Path | str = "enrichment",
) -> None:
    """Attach triples and abstracts to catalogue items.

    Rows naming items outside the catalogue are skipped with one warning (naming ``source``) that
    counts them; a catalogue item without any row is left as it is.
    """
    skipped = 0
    for item, rel, ent in triples:
        if item not in catalogue:
            skipped += 1
            continue
        catalogue.get(item).entities.setdefault(rel, []).append(ent)
    for item, text in abstracts:
        if item not in catalogue:
            skipped += 1
            continue
        catalogue.get(item).abstract = text
    if skipped:
        log.warning("%s: %d rows name items outside the catalogue; skipped", source, skipped)


def enrich_from_dir(catalogue: Catalogue, root: Path) -> None:
    """Apply ``root/triples.tsv`` and ``root/abstracts.tsv`` where present (see :func:`enrich`)."""
    triples, abstracts = root / "triples.tsv", root / "abstracts.tsv"
    if triples.exists():
        enrich(catalogue, read_triples(triples), (), source=triples)
    if abstracts.exists():
        enrich(catalogue, (), read_abstracts(abstracts), source=abstracts)
