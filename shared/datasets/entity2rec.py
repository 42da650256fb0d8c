"""The entity2rec DBpedia KG of MovieLens films (``D2KLab/entity2rec``, ``datasets/Movielens1M``).

Layout of the directory (``data_dir/kg/entity2rec-ml1m-dbpedia``):

* ``mappings.tsv``: ``movieId <TAB> title <TAB> film DBpedia URI``; the ids are MovieLens global
  movieIds (those of ``ml-latest-small/movies.csv``). One URI may map several movieIds.
* ``graphs/<prefix>_<property>.edgelist``: ``<film URI> <entity URI>``, space-separated, one pair a
  line, for one predicate (``dbo_musicComposer.edgelist`` is ``dbo:musicComposer``).

Film URIs become movieIds through ``mappings.tsv``, predicates our relation names through
:data:`~shared.datasets.enrichment.RELATION_VOCABULARY`. An edgelist of a predicate outside the
vocabulary is skipped with one warning (its edges are counted, not parsed), as are edges of films
missing from the mapping (one warning per file, with the count).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from shared.datasets.core import lines, parse_int
from shared.datasets.enrichment import Triple, relation_name, warn_unknown_relations
from shared.errors import DataError

log = logging.getLogger(__name__)

#: Where the KG sits under a data directory.
ENTITY2REC_DIR = Path("kg") / "entity2rec-ml1m-dbpedia"


def read_mappings(path: Path) -> dict[str, list[int]]:
    """Read ``mappings.tsv``: film URI -> movieIds, in file order.

    Raises
    ------
    DataError
        Naming the file and line of a line that is not ``movieId<TAB>title<TAB>URI`` or repeats a movieId.
    """
    out: dict[str, list[int]] = {}
    seen: set[int] = set()
    for n, line in lines(path):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 3 or not f[2].strip():
            raise DataError(path, "expected 'movieId<TAB>title<TAB>DBpedia URI'", n)
        movie = parse_int(f[0], path, n, "movieId")
        if movie in seen:
            raise DataError(path, f"movieId {movie} is mapped twice", n)
        seen.add(movie)
        out.setdefault(f[2].strip(), []).append(movie)
    return out


def read_edgelist(path: Path) -> Iterator[tuple[str, str]]:
    """Read one edgelist: ``(film URI, entity URI)`` pairs; raises :class:`DataError` naming file and line."""
    for n, line in lines(path):
        if not line.strip():
            continue
        f = line.split()
        if len(f) != 2:
            raise DataError(path, f"expected '<film URI> <entity URI>' (2 space-separated fields), got {len(f)}", n)
        yield f[0], f[1]


def edgelist_predicate(path: Path) -> str:
    """The predicate an edgelist holds, from its name: ``dbo_musicComposer.edgelist`` -> ``dbo:musicComposer``."""
    prefix, sep, name = path.name.removesuffix(".edgelist").partition("_")
    return f"{prefix}:{name}" if sep else prefix


def read_entity2rec(root: Path) -> list[Triple]:
    """All triples of an entity2rec KG directory as ``(movieId, our relation, entity URI)``, deduplicated.

    Raises
    ------
    DataError
        If ``mappings.tsv`` or ``graphs/`` is missing, or naming the file and line of a malformed line.
    """
    mappings = read_mappings(root / "mappings.tsv")
    graphs = root / "graphs"
    if not graphs.is_dir():
        raise DataError(graphs, "directory of <prefix>_<property>.edgelist files not found")
    triples: dict[Triple, None] = {}
    for path in sorted(graphs.glob("*.edgelist")):
        predicate = edgelist_predicate(path)
        rel = relation_name(predicate)
        if rel is None:
            warn_unknown_relations(path, {predicate: sum(1 for _, line in lines(path) if line.strip())})
            continue
        unmapped = 0
        for film, entity in read_edgelist(path):
            movies = mappings.get(film)
            if not movies:
                unmapped += 1
                continue
            triples.update(((m, rel, entity), None) for m in movies)
        if unmapped:
            log.warning("%s: %d edges name films not in %s; skipped", path, unmapped, root / "mappings.tsv")
    log.info("entity2rec KG %s: %d triples", root, len(triples))
    return list(triples)
