"""Datasets: interactions, the public item catalogue, and its enrichment (KG triples, abstracts).

Readers exist for MovieLens-100K (``u.data``, ``u.item`` in latin-1, ``u.genre``) and for the
MovieLens CSV releases (``ratings.csv``, ``movies.csv``, optional ``links.csv`` / ``tags.csv``).
Item enrichment uses one generic format any dataset can supply:

* ``triples.tsv``: ``item_id <TAB> relation <TAB> entity`` (entity: a URI or a label), one per line;
* ``abstracts.tsv``: ``item_id <TAB> text``.

The FranKGraphBench DBpedia files for ml-100k (``enriched.csv``) are converted to that form at load
time. Every reader raises :class:`~shared.errors.DataError` naming the file and line on bad input.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from shared.errors import DataError, UnknownItemError

log = logging.getLogger(__name__)

csv.field_size_limit(1 << 24)

#: Relation names used in the generic triples format, from the DBpedia predicates.
DBPEDIA_RELATIONS = {
    "dbo:director": "director",
    "dbo:starring": "starring",
    "dbo:writer": "writer",
    "dbo:producer": "producer",
    "dbo:cinematography": "cinematography",
    "dbo:distributor": "distributor",
    "dct:subject": "subject",
}
KG_VERSIONS = ("dbpedia-2016-10", "dbpedia-live-2024")
DEFAULT_KG_VERSION = "dbpedia-live-2024"

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def entity_label(entity: str) -> str:
    """Readable label of an entity URI: ``.../Category:1995_films`` -> ``1995 films``."""
    name = entity.rsplit("/", 1)[-1] if entity.startswith("http") else entity
    if name.startswith("Category:"):
        name = name[len("Category:") :]
    return name.replace("_", " ").strip()


@dataclass
class Item:
    """One catalogue item (public data)."""

    id: int
    title: str
    year: int | None = None
    genres: list[str] = field(default_factory=list)
    abstract: str = ""
    #: relation -> entities (URIs or labels), in file order
    entities: dict[str, list[str]] = field(default_factory=dict)
    #: ids in other catalogues (``imdb``, ``tmdb`` from a MovieLens ``links.csv``)
    external_ids: dict[str, str] = field(default_factory=dict)

    def text(self, max_abstract_chars: int = 600) -> str:
        """The text the item tower reads: title, year, genres, main KG entities, abstract."""
        parts = [self.title + (f" ({self.year})" if self.year else "") + "."]
        if self.genres:
            parts.append("Genres: " + ", ".join(self.genres) + ".")
        for rel, lead, n in (("director", "Directed by", 2), ("starring", "Starring", 4)):
            names = [entity_label(e) for e in self.entities.get(rel, [])[:n]]
            if names:
                parts.append(f"{lead} " + ", ".join(names) + ".")
        if self.abstract:
            parts.append(self.abstract[:max_abstract_chars])
        return " ".join(parts)


@dataclass
class Catalogue:
    """The public item catalogue: items in a fixed order; row ``i`` of every item matrix is item ``i``."""

    items: list[Item]
    genres: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._index = {it.id: i for i, it in enumerate(self.items)}
        if len(self._index) != len(self.items):
            raise ValueError("catalogue has duplicate item ids")

    def __len__(self) -> int:
        return len(self.items)

    def index(self, item_id: int) -> int:
        """Row of ``item_id``; raises :class:`UnknownItemError` for an id not in the catalogue."""
        try:
            return self._index[item_id]
        except KeyError:
            raise UnknownItemError(item_id) from None

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def get(self, item_id: int) -> Item:
        return self.items[self.index(item_id)]

    @property
    def ids(self) -> list[int]:
        return [it.id for it in self.items]

    def texts(self) -> list[str]:
        return [it.text() for it in self.items]

    def add(self, item: Item) -> int:
        """Append a new (cold-start) item and return its row."""
        if item.id in self._index:
            raise ValueError(f"item id {item.id} already in the catalogue")
        self.items.append(item)
        self._index[item.id] = len(self.items) - 1
        return len(self.items) - 1


@dataclass
class Interactions:
    """Interactions in file order, with item ids already mapped to catalogue rows."""

    users: np.ndarray  # (N,) int64 raw user ids
    items: np.ndarray  # (N,) int64 catalogue rows
    ratings: np.ndarray  # (N,) float32
    timestamps: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def subset(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.users[mask], self.items[mask], self.ratings[mask], self.timestamps[mask])


@dataclass
class Dataset:
    """A dataset: interactions plus the catalogue they refer to."""

    name: str
    interactions: Interactions
    catalogue: Catalogue


# --------------------------------------------------------------------------------------- readers


def _open_text(path: Path, encoding: str = "utf-8") -> TextIO:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.suffix == ".gz":
        try:
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
        except OSError as e:
            raise DataError(path, f"cannot open gzip file: {e}") from e
    return open(path, encoding=encoding, newline="")


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    with _open_text(path, encoding) as f:
        try:
            for n, line in enumerate(f, start=1):
                yield n, line.rstrip("\r\n")
        except (EOFError, gzip.BadGzipFile, UnicodeDecodeError) as e:
            raise DataError(path, f"truncated or undecodable file: {e}") from e


def _int(value: str, path: Path, line: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(path, f"{what} {value!r} is not an integer", line) from None


def _float(value: str, path: Path, line: int, what: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise DataError(path, f"{what} {value!r} is not a number", line) from None
    if not np.isfinite(out):
        raise DataError(path, f"{what} {value!r} is not finite", line)
    return out


def read_ml100k_items(path: Path, genres: list[str]) -> list[Item]:
    """Read ``u.item`` (latin-1, 24 ``|``-separated fields)."""
    items: list[Item] = []
    for n, line in _lines(path, "latin-1"):
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 + len(genres):
            raise DataError(path, f"expected {5 + len(genres)} '|'-separated fields, got {len(f)}", n)
        item_id = _int(f[0], path, n, "item id")
        m = _TITLE_YEAR.match(f[1])
        title, year = (m["title"], int(m["year"])) if m else (f[1], None)
        if year is None and f[2][-4:].isdigit():
            year = int(f[2][-4:])
        flags = f[5:]
        if any(x not in ("0", "1") for x in flags):
            raise DataError(path, "genre flags must be 0 or 1", n)
        g = [genres[i] for i, x in enumerate(flags) if x == "1" and genres[i] != "unknown"]
        items.append(Item(id=item_id, title=title, year=year, genres=g))
    return items


def read_ml100k_genres(path: Path) -> list[str]:
    """Read ``u.genre`` (``name|index`` lines, blank trailer)."""
    out: list[str] = []
    for n, line in _lines(path, "latin-1"):
        if not line.strip():
            continue
        name, sep, idx = line.partition("|")
        if not sep or _int(idx, path, n, "genre index") != len(out):
            raise DataError(path, "expected 'name|index' with consecutive indices", n)
        out.append(name)
    return out


RatingRow = tuple[int, int, float, int]


def _rating_row(f: list[str], path: Path, n: int, names: tuple[str, str], sep: str) -> RatingRow:
    if len(f) != 4:
        raise DataError(path, f"expected 4 {sep}-separated fields, got {len(f)}", n)
    return (
        _int(f[0], path, n, names[0]),
        _int(f[1], path, n, names[1]),
        _float(f[2], path, n, "rating"),
        _int(f[3], path, n, "timestamp"),
    )


def _rating_arrays(rows: list[RatingRow], path: Path) -> tuple[np.ndarray, ...]:
    if not rows:
        raise DataError(path, "no ratings")
    u, i, r, t = zip(*rows, strict=True)
    return np.array(u, np.int64), np.array(i, np.int64), np.array(r, np.float32), np.array(t, np.int64)


def read_ml100k_ratings(path: Path) -> tuple[np.ndarray, ...]:
    """Read ``u.data``: ``user <TAB> item <TAB> rating <TAB> timestamp``."""
    rows = [
        _rating_row(line.split("\t"), path, n, ("user id", "item id"), "tab")
        for n, line in _lines(path, "latin-1")
        if line.strip()
    ]
    return _rating_arrays(rows, path)


def read_movielens_csv_ratings(path: Path) -> tuple[np.ndarray, ...]:
    """Read a MovieLens CSV ``ratings.csv`` (``userId,movieId,rating,timestamp``)."""
    rows: list[RatingRow] = []
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != ["userId", "movieId", "rating", "timestamp"]:
            raise DataError(path, "header must be 'userId,movieId,rating,timestamp'", 1)
        rows = [_rating_row(f, path, reader.line_num, ("userId", "movieId"), "comma") for f in reader if f]
    return _rating_arrays(rows, path)


def read_movielens_csv_items(path: Path) -> tuple[list[Item], list[str]]:
    """Read a MovieLens CSV ``movies.csv`` (``movieId,title,genres``; title "Name (Year)")."""
    items: list[Item] = []
    genres: dict[str, None] = {}
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
            raise DataError(path, "header must be 'movieId,title,genres'", 1)
        for f in reader:
            n = reader.line_num
            if not f:
                continue
            if len(f) != 3:
                raise DataError(path, f"expected 3 fields, got {len(f)}", n)
            m = _TITLE_YEAR.match(f[1].strip())
            title, year = (m["title"], int(m["year"])) if m else (f[1].strip(), None)
            g = [x for x in f[2].split("|") if x and x != "(no genres listed)"]
            genres.update(dict.fromkeys(g))
            items.append(Item(id=_int(f[0], path, n, "movieId"), title=title, year=year, genres=g))
    return items, list(genres)


def read_movielens_csv_tags(path: Path) -> dict[int, list[str]]:
    """Read the optional ``tags.csv`` (``userId,movieId,tag,timestamp``): movieId -> tags."""
    out: dict[int, list[str]] = {}
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["userId", "movieId", "tag"]:
            raise DataError(path, "header must start 'userId,movieId,tag'", 1)
        for f in reader:
            if len(f) < 3:
                raise DataError(path, f"expected 4 fields, got {len(f)}", reader.line_num)
            out.setdefault(_int(f[1], path, reader.line_num, "movieId"), []).append(f[2].strip())
    return out


def read_movielens_csv_links(path: Path) -> dict[int, dict[str, str]]:
    """Read the optional ``links.csv`` (``movieId,imdbId,tmdbId``): movieId -> {"imdb": .., "tmdb": ..}."""
    out: dict[int, dict[str, str]] = {}
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["movieId", "imdbId", "tmdbId"]:
            raise DataError(path, "header must be 'movieId,imdbId,tmdbId'", 1)
        for f in reader:
            if not f:
                continue
            if len(f) != 3:
                raise DataError(path, f"expected 3 fields, got {len(f)}", reader.line_num)
            ids = {k: v.strip() for k, v in (("imdb", f[1]), ("tmdb", f[2])) if v.strip()}
            out[_int(f[0], path, reader.line_num, "movieId")] = ids
    return out


# ------------------------------------------------------------------------------------ enrichment


def read_triples(path: Path) -> Iterator[tuple[int, str, str]]:
    """Read the generic triples file: ``item_id <TAB> relation <TAB> entity`` (``#`` comments)."""
    for n, line in _lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split("\t")
        if len(f) != 3 or not f[1] or not f[2]:
            raise DataError(path, "expected 'item_id<TAB>relation<TAB>entity'", n)
        yield _int(f[0], path, n, "item id"), f[1], f[2]


def read_abstracts(path: Path) -> Iterator[tuple[int, str]]:
    """Read the generic abstracts file: ``item_id <TAB> text``."""
    for n, line in _lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        item, sep, text = line.partition("\t")
        if not sep:
            raise DataError(path, "expected 'item_id<TAB>text'", n)
        yield _int(item, path, n, "item id"), text


def read_frankgraphbench(path: Path) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """Convert FranKGraphBench ``enriched.csv`` into generic triples and abstracts."""
    triples: list[tuple[int, str, str]] = []
    abstracts: list[tuple[int, str]] = []
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or not header or not header[0].startswith("item_id"):
            raise DataError(path, "header must start with 'item_id::string'", 1)
        cols = [h.split("::")[0] for h in header]
        try:
            abstract_col = cols.index("abstract")
        except ValueError:
            raise DataError(path, "no 'abstract' column", 1) from None
        for f in reader:
            n = reader.line_num
            if not f:
                continue
            if len(f) != len(cols):
                raise DataError(path, f"expected {len(cols)} fields, got {len(f)}", n)
            item = _int(f[0], path, n, "item_id")
            if f[abstract_col]:
                abstracts.append((item, f[abstract_col]))
            for col, value in zip(cols, f, strict=True):
                if col in ("item_id", "abstract") or not value:
                    continue
                for ent in value.split("::"):
                    if ent:
                        triples.append((item, col, ent))
    return triples, abstracts


def enrich(catalogue: Catalogue, triples: Iterable[tuple[int, str, str]], abstracts: Iterable[tuple[int, str]]) -> None:
    """Attach enrichment to catalogue items; ids not in the catalogue are skipped with a warning."""
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
        log.warning("enrichment: %d rows name items outside the catalogue; skipped", skipped)


# --------------------------------------------------------------------------------------- loading


def default_data_dir() -> Path:
    """The data directory: ``$FEDXREC_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("FEDXREC_DATA_DIR", "data"))


def _interactions(catalogue: Catalogue, path: Path, arrays: tuple[np.ndarray, ...]) -> Interactions:
    users, raw_items, ratings, ts = arrays
    index = {iid: i for i, iid in enumerate(catalogue.ids)}
    rows = np.empty_like(raw_items)
    for n, iid in enumerate(raw_items.tolist()):
        try:
            rows[n] = index[iid]
        except KeyError:
            raise DataError(path, f"item id {iid} is not in the item file", n + 1) from None
    return Interactions(users, rows, ratings, ts)


def load_ml100k(data_dir: str | Path, *, kg_version: str | None = DEFAULT_KG_VERSION) -> Dataset:
    """Load MovieLens-100K from ``data_dir/ml-100k`` with its DBpedia enrichment (if present)."""
    root = Path(data_dir) / "ml-100k"
    genres = read_ml100k_genres(root / "u.genre")
    catalogue = Catalogue(read_ml100k_items(root / "u.item", genres), [g for g in genres if g != "unknown"])
    inter = _interactions(catalogue, root / "u.data", read_ml100k_ratings(root / "u.data"))
    if kg_version:
        if kg_version not in KG_VERSIONS:
            raise ValueError(f"kg_version must be one of {KG_VERSIONS}, got {kg_version!r}")
        enriched = Path(data_dir) / "kg" / "frankgraphbench-ml100k-dbpedia" / kg_version / "enriched.csv"
        if enriched.exists():
            triples, abstracts = read_frankgraphbench(enriched)
            enrich(catalogue, triples, abstracts)
        else:
            log.warning("no KG enrichment at %s: items carry title, year and genres only", enriched)
    return Dataset("ml-100k", inter, catalogue)


def load_movielens_csv(root: str | Path, *, name: str | None = None) -> Dataset:
    """Load a MovieLens CSV release directory (``ratings.csv``, ``movies.csv``; ``tags.csv``, ``links.csv`` optional).

    Generic enrichment files ``triples.tsv`` / ``abstracts.tsv`` in the same directory are used if
    present.
    """
    root = Path(root)
    items, genres = read_movielens_csv_items(root / "movies.csv")
    catalogue = Catalogue(items, genres)
    inter = _interactions(catalogue, root / "ratings.csv", read_movielens_csv_ratings(root / "ratings.csv"))
    if (root / "tags.csv").exists():
        for mid, tags in read_movielens_csv_tags(root / "tags.csv").items():
            if mid in catalogue:
                catalogue.get(mid).entities.setdefault("tag", []).extend(dict.fromkeys(tags))
    if (root / "links.csv").exists():
        for mid, ids in read_movielens_csv_links(root / "links.csv").items():
            if mid in catalogue:
                catalogue.get(mid).external_ids.update(ids)
    triples = read_triples(root / "triples.tsv") if (root / "triples.tsv").exists() else ()
    abstracts = read_abstracts(root / "abstracts.tsv") if (root / "abstracts.tsv").exists() else ()
    enrich(catalogue, triples, abstracts)
    return Dataset(name or root.name, inter, catalogue)


def load_dataset(name: str = "ml-100k", data_dir: str | Path | None = None, **kwargs: object) -> Dataset:
    """Load a dataset by name from the data directory (downloading ml-100k where it is missing)."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "ml-100k":
        if not (data_dir / "ml-100k" / "u.data").exists():
            from shared.download import download_ml100k

            download_ml100k(data_dir)
        return load_ml100k(data_dir, **kwargs)  # type: ignore[arg-type]
    path = data_dir / name
    if (path / "ratings.csv").exists():
        return load_movielens_csv(path, name=name)
    raise DataError(path, f"unknown dataset {name!r}: no ml-100k files and no ratings.csv")
