"""The declared knowledge-graph schema, in one place (after PGPR's ``utils.py``); read-only mappings.

Entity types, relations with their head and tail types, the path patterns explanations may use,
relation informativeness weights, and how entities get readable labels.

Hops
----
Hops are counted as in PGPR, from the user: ``user -watched-> item -r1-> entity <-r2- item`` is a
3-hop path. Users are never nodes (their history arrives with each query), so the graph part of
an explanation is the 2-hop ``history item -r1-> entity <-r2- recommended item``. Every edge of the
graph goes from an item to an entity, so the next longer item-to-item path would be 4 graph hops
(5 with the user): not allowed, such chains are too weak to be believed.

Patterns
--------
* same relation on both sides, for every relation (``director``/``director``, ``has_genre``/...);
* cross-role through a person (``writer``/``director``, ``starring``/``director``, ...): the same
  person in two roles is a real, checkable link ("written by John Lasseter, who also directed this
  one"), so all ordered pairs of person relations are allowed, at a small discount.

Companies and categories link only through their own relation.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from itertools import permutations
from types import MappingProxyType
from typing import NamedTuple

# Entity (node) types.
ITEM = "item"
GENRE = "genre"
DECADE = "decade"
PERSON = "person"
COMPANY = "company"
CATEGORY = "category"
ENTITY_TYPES: tuple[str, ...] = (ITEM, GENRE, DECADE, PERSON, COMPANY, CATEGORY)

# Relations.
HAS_GENRE = "has_genre"
RELEASED_IN_DECADE = "released_in_decade"
DIRECTOR = "director"
STARRING = "starring"
WRITER = "writer"
PRODUCER = "producer"
COMPOSER = "composer"
CINEMATOGRAPHY = "cinematography"
EDITOR = "editor"
DISTRIBUTOR = "distributor"
SUBJECT = "subject"


class RelationSpec(NamedTuple):
    """Head and tail entity types of a relation."""

    head: str
    tail: str


RELATIONS: Mapping[str, RelationSpec] = MappingProxyType(
    {
        HAS_GENRE: RelationSpec(ITEM, GENRE),
        RELEASED_IN_DECADE: RelationSpec(ITEM, DECADE),
        DIRECTOR: RelationSpec(ITEM, PERSON),
        STARRING: RelationSpec(ITEM, PERSON),
        WRITER: RelationSpec(ITEM, PERSON),
        PRODUCER: RelationSpec(ITEM, PERSON),
        COMPOSER: RelationSpec(ITEM, PERSON),
        CINEMATOGRAPHY: RelationSpec(ITEM, PERSON),
        EDITOR: RelationSpec(ITEM, PERSON),
        DISTRIBUTOR: RelationSpec(ITEM, COMPANY),
        SUBJECT: RelationSpec(ITEM, CATEGORY),
    }
)

#: Relations whose tails come from an item's ``entities`` mapping (the DBpedia links; the names a
#: dataset's relation vocabulary maps source predicates to, ``shared.datasets.enrichment``).
ENTITY_RELATIONS: tuple[str, ...] = (
    DIRECTOR,
    STARRING,
    WRITER,
    PRODUCER,
    COMPOSER,
    CINEMATOGRAPHY,
    EDITOR,
    DISTRIBUTOR,
    SUBJECT,
)
PERSON_RELATIONS: tuple[str, ...] = tuple(r for r, s in RELATIONS.items() if s.tail == PERSON)

#: How much a shared entity through this relation tells a user (director/writer most, distributor
#: least): director/writer > starring > cinematography/producer > composer/editor > subject > genre/decade >
#: distributor.
RELATION_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        DIRECTOR: 1.0,
        WRITER: 0.95,
        STARRING: 0.8,
        CINEMATOGRAPHY: 0.6,
        PRODUCER: 0.6,
        COMPOSER: 0.5,
        EDITOR: 0.5,
        SUBJECT: 0.45,
        HAS_GENRE: 0.25,
        RELEASED_IN_DECADE: 0.2,
        DISTRIBUTOR: 0.15,
    }
)
#: Weight factor of a cross-role pattern (same person, two roles) over a same-role one.
CROSS_ROLE_DISCOUNT = 0.9

MAX_HOPS = 3  # counting the implicit user -watched-> history item edge

#: Allowed ``(relation at the history item, relation at the recommended item)`` pairs.
PATH_PATTERNS: frozenset[tuple[str, str]] = frozenset(
    [(r, r) for r in RELATIONS] + list(permutations(PERSON_RELATIONS, 2))
)
#: A path's type (for ETD) is the relation arriving at the recommended item, as in Balloccu et al.
PATH_TYPES: tuple[str, ...] = tuple(RELATIONS)


def is_allowed(history_relation: str, target_relation: str) -> bool:
    """Whether the pattern ``item -history_relation-> e <-target_relation- item`` is allowed."""
    return (history_relation, target_relation) in PATH_PATTERNS


def pattern_weight(history_relation: str, target_relation: str) -> float:
    """Informativeness of a path pattern; raises ``ValueError`` for a pattern not in the schema."""
    if not is_allowed(history_relation, target_relation):
        raise ValueError(f"path pattern ({history_relation!r}, {target_relation!r}) is not in the schema")
    if history_relation == target_relation:
        return RELATION_WEIGHTS[history_relation]
    w = (RELATION_WEIGHTS[history_relation] * RELATION_WEIGHTS[target_relation]) ** 0.5
    return CROSS_ROLE_DISCOUNT * w


# ---------------------------------------------------------------------- explanation kinds
# How telling a path's shared entity is, most telling first; the explainer ranks a path by its kind,
# then by score (so "also directed by X" beats "another Drama" whenever both exist).
KIND_PERSON = "person"
KIND_COMPANY = "company"
KIND_CATEGORY = "category"
KIND_COARSE = "coarse"
EXPLANATION_KINDS: tuple[str, ...] = (KIND_PERSON, KIND_COMPANY, KIND_CATEGORY, KIND_COARSE)
#: Kinds that name a specific entity (``explain.entity_share@10`` counts first paths of these kinds).
ENTITY_KINDS: frozenset[str] = frozenset({KIND_PERSON, KIND_COMPANY})
_KIND_OF_TAIL = {PERSON: KIND_PERSON, COMPANY: KIND_COMPANY, CATEGORY: KIND_CATEGORY, GENRE: KIND_COARSE}
#: Kind of a path arriving through each relation (any relation to a person is a person path).
RELATION_KINDS: Mapping[str, str] = MappingProxyType(
    {r: _KIND_OF_TAIL.get(s.tail, KIND_COARSE) for r, s in RELATIONS.items()}
)
#: Categories that are coarse whatever their size: named after a year or decade ("1996 films",
#: "1990s American films": a decade link in disguise) or a filming location ("Films shot in
#: Arizona": where the crew worked, not what the film is). Matched on the readable label.
COARSE_CATEGORY_NAME = re.compile(r"^(\d{4}s?\b|Films shot in\b)", re.IGNORECASE)

_SPACES = re.compile(r"\s+")


def entity_label(entity: str) -> str:
    """Readable label of an entity URI or label.

    ``http://dbpedia.org/resource/John_Lasseter`` -> ``John Lasseter``,
    ``.../Category:1995_films`` -> ``1995 films``, ``Y%3FN-Vee`` -> ``Y?N-Vee``; a plain label is
    returned with its whitespace tidied.

    Raises
    ------
    ValueError
        If the entity is empty or has an empty name.
    """
    name = entity.strip()
    if "://" in name:
        name = name.rstrip("/").rsplit("/", 1)[-1]
    name = urllib.parse.unquote(name)
    if name.startswith("Category:"):
        name = name[len("Category:") :]
    label = _SPACES.sub(" ", name.replace("_", " ")).strip()
    if not label:
        raise ValueError(f"entity {entity!r} has an empty name")
    return label


_TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>The|A|An|Les|La|Le|Il|Das|Der|Die|El)$")


def display_title(title: str) -> str:
    """Catalogue title as people write it: ``Mirror Has Two Faces, The`` -> ``The Mirror Has Two Faces``."""
    m = _TRAILING_ARTICLE.match(title.strip())
    return f"{m['article']} {m['rest']}" if m else title.strip()


def decade_of(year: int) -> str:
    """Decade label of a year: ``1995`` -> ``1990s``."""
    return f"{year // 10 * 10}s"
