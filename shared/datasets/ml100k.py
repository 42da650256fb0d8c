"""MovieLens-100K (``u.data``, ``u.item`` in latin-1, ``u.genre``) and its FranKGraphBench DBpedia enrichment.

The enrichment is ``data_dir/kg/frankgraphbench-ml100k-dbpedia/<version>/enriched.csv`` (one row per
item: an abstract and ``::``-joined entity lists, one column per relation); it is converted to
generic triples and abstracts at load time.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from shared.datasets.core import (
    Catalogue,
    Dataset,
    Item,
    lines,
    map_interactions,
    open_text,
    parse_int,
    rating_arrays,
    rating_row,
    split_title_year,
)
from shared.datasets.enrichment import Triple, enrich, relation_name, warn_unknown_relations
from shared.errors import DataError

log = logging.getLogger(__name__)

KG_VERSIONS = ("dbpedia-2016-10", "dbpedia-live-2024")
DEFAULT_KG_VERSION = "dbpedia-live-2024"


def read_ml100k_genres(path: Path) -> list[str]:
    """Read ``u.genre`` (``name|index`` lines, blank trailer)."""
    out: list[str] = []
    for n, line in lines(path, "latin-1"):
        if not line.strip():
            continue
        name, sep, idx = line.partition("|")
        if not sep or parse_int(idx, path, n, "genre index") != len(out):
            raise DataError(path, "expected 'name|index' with consecutive indices", n)
        out.append(name)
    return out


def read_ml100k_items(path: Path, genres: list[str]) -> list[Item]:
    """Read ``u.item`` (latin-1, 24 ``|``-separated fields)."""
    items: list[Item] = []
    for n, line in lines(path, "latin-1"):
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 + len(genres):
            raise DataError(path, f"expected {5 + len(genres)} '|'-separated fields, got {len(f)}", n)
        item_id = parse_int(f[0], path, n, "item id")
        title, year = split_title_year(f[1])
        if year is None and f[2][-4:].isdigit():
            year = int(f[2][-4:])
        flags = f[5:]
        if any(x not in ("0", "1") for x in flags):
            raise DataError(path, "genre flags must be 0 or 1", n)
        g = [genres[i] for i, x in enumerate(flags) if x == "1" and genres[i] != "unknown"]
        items.append(Item(id=item_id, title=title, year=year, genres=g))
    return items


def read_ml100k_ratings(path: Path) -> tuple[np.ndarray, ...]:
    """Read ``u.data``: ``user <TAB> item <TAB> rating <TAB> timestamp``."""
    rows = [
        rating_row(line.split("\t"), path, n, ("user id", "item id"), "tab")
        for n, line in lines(path, "latin-1")
        if line.strip()
    ]
    return rating_arrays(rows, path)


def read_frankgraphbench(path: Path) -> tuple[list[Triple], list[tuple[int, str]]]:
    """Convert FranKGraphBench ``enriched.csv`` into generic triples and abstracts.

    A column outside the relation vocabulary is skipped with one warning.

    Raises
    ------
    DataError
        Naming the file and line of a bad header or row.
    """
    triples: list[Triple] = []
    abstracts: list[tuple[int, str]] = []
    skipped: Counter[str] = Counter()
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or not header or not header[0].startswith("item_id"):
            raise DataError(path, "header must start with 'item_id::string'", 1)
        cols = [h.split("::")[0] for h in header]
        try:
            abstract_col = cols.index("abstract")
        except ValueError:
            raise DataError(path, "no 'abstract' column", 1) from None
        relations = [None if c in ("item_id", "abstract") else (c, relation_name(c)) for c in cols]
        for f in reader:
            n = reader.line_num
            if not f:
                continue
            if len(f) != len(cols):
                raise DataError(path, f"expected {len(cols)} fields, got {len(f)}", n)
            item = parse_int(f[0], path, n, "item_id")
            if f[abstract_col]:
                abstracts.append((item, f[abstract_col]))
            for col, value in zip(relations, f, strict=True):
                if col is None or not value:
                    continue
                ents = [e for e in value.split("::") if e]
                if col[1] is None:
                    skipped[col[0]] += len(ents)
                else:
                    triples.extend((item, col[1], e) for e in ents)
    warn_unknown_relations(path, skipped)
    return triples, abstracts


def load_ml100k(data_dir: str | Path, *, kg_version: str | None = DEFAULT_KG_VERSION) -> Dataset:
    """Load MovieLens-100K from ``data_dir/ml-100k`` with its DBpedia enrichment (if present).

    Raises
    ------
    ValueError
        For a ``kg_version`` not in :data:`KG_VERSIONS`.
    DataError
        Naming the file and line of missing or malformed input.
    """
    root = Path(data_dir) / "ml-100k"
    genres = read_ml100k_genres(root / "u.genre")
    catalogue = Catalogue(read_ml100k_items(root / "u.item", genres), [g for g in genres if g != "unknown"])
    inter = map_interactions(catalogue, root / "u.data", read_ml100k_ratings(root / "u.data"))
    if kg_version:
        if kg_version not in KG_VERSIONS:
            raise ValueError(f"kg_version must be one of {KG_VERSIONS}, got {kg_version!r}")
        enriched = Path(data_dir) / "kg" / "frankgraphbench-ml100k-dbpedia" / kg_version / "enriched.csv"
        if enriched.exists():
            triples, abstracts = read_frankgraphbench(enriched)
            enrich(catalogue, triples, abstracts, source=enriched)
        else:
            log.warning("no KG enrichment at %s: items carry title, year and genres only", enriched)
    return Dataset("ml-100k", inter, catalogue)
