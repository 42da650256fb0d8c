"""The MovieLens CSV releases (ml-latest-small, ml-25m, ...): ``ratings.csv``, ``movies.csv``, optional ``links.csv``.

``tags.csv`` holds users' own free-text tags: behaviour data, like ratings. It is never read into the
catalogue or the KG, which hold public facts about items only.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from shared.datasets.core import (
    Catalogue,
    Dataset,
    Item,
    RatingRow,
    check_header,
    map_interactions,
    open_text,
    parse_int,
    rating_arrays,
    rating_row,
    split_title_year,
)
from shared.datasets.enrichment import enrich_from_dir
from shared.errors import DataError


def read_movielens_csv_ratings(path: Path) -> tuple[np.ndarray, ...]:
    """Read a MovieLens CSV ``ratings.csv`` (``userId,movieId,rating,timestamp``)."""
    rows: list[RatingRow] = []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        expected = ["userId", "movieId", "rating", "timestamp"]
        check_header(next(reader, None), expected, path, "header must be 'userId,movieId,rating,timestamp'")
        rows = [rating_row(f, path, reader.line_num, ("userId", "movieId"), "comma") for f in reader if f]
    return rating_arrays(rows, path)


def read_movielens_csv_items(path: Path) -> tuple[list[Item], list[str]]:
    """Read a MovieLens CSV ``movies.csv`` (``movieId,title,genres``; title "Name (Year)")."""
    items: list[Item] = []
    genres: dict[str, None] = {}
    with open_text(path) as fh:
        reader = csv.reader(fh)
        check_header(next(reader, None), ["movieId", "title", "genres"], path, "header must be 'movieId,title,genres'")
        for f in reader:
            n = reader.line_num
            if not f:
                continue
            if len(f) != 3:
                raise DataError(path, f"expected 3 fields, got {len(f)}", n)
            title, year = split_title_year(f[1])
            g = [x for x in f[2].split("|") if x and x != "(no genres listed)"]
            genres.update(dict.fromkeys(g))
            items.append(Item(id=parse_int(f[0], path, n, "movieId"), title=title, year=year, genres=g))
    return items, list(genres)


def read_movielens_csv_links(path: Path) -> dict[int, dict[str, str]]:
    """Read ``links.csv`` (``movieId,imdbId,tmdbId``): movieId -> ``{"imdb": .., "tmdb": ..}``."""
    out: dict[int, dict[str, str]] = {}
    with open_text(path) as fh:
        reader = csv.reader(fh)
        check_header(
            next(reader, None), ["movieId", "imdbId", "tmdbId"], path, "header must be 'movieId,imdbId,tmdbId'"
        )
        for f in reader:
            if not f:
                continue
            if len(f) != 3:
                raise DataError(path, f"expected 3 fields, got {len(f)}", reader.line_num)
            ids = {k: v.strip() for k, v in (("imdb", f[1]), ("tmdb", f[2])) if v.strip()}
            out[parse_int(f[0], path, reader.line_num, "movieId")] = ids
    return out


def load_movielens_csv(root: str | Path, *, name: str | None = None) -> Dataset:
    """Load a MovieLens CSV release directory (``ratings.csv``, ``movies.csv``; ``links.csv`` optional).

    Generic enrichment files ``triples.tsv`` / ``abstracts.tsv`` in the same directory are used if
    present; ``tags.csv`` is never read (see the module docstring).

    Raises
    ------
    DataError
        Naming the file and line of missing or malformed input.
    """
    root = Path(root)
    items, genres = read_movielens_csv_items(root / "movies.csv")
    catalogue = Catalogue(items, genres)
    inter = map_interactions(catalogue, root / "ratings.csv", read_movielens_csv_ratings(root / "ratings.csv"))
    if (root / "links.csv").exists():
        for mid, ids in read_movielens_csv_links(root / "links.csv").items():
            if mid in catalogue:
                catalogue.get(mid).external_ids.update(ids)
    enrich_from_dir(catalogue, root)
    return Dataset(name or root.name, inter, catalogue)
