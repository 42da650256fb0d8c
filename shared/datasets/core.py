"""What every dataset is made of (items, catalogue, interactions) and the line/field helpers readers share.

Every helper that reads a file raises :class:`~shared.errors.DataError` naming the file and, where
known, the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from shared.errors import DataError, UnknownItemError

csv.field_size_limit(1 << 24)

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def entity_label(entity: str) -> str:
    """Readable label of an entity URI: ``.../Category:1995_films`` -> ``1995 films``."""
    name = entity.rsplit("/", 1)[-1] if entity.startswith("http") else entity
    if name.startswith("Category:"):
        name = name[len("Category:") :]
    return name.replace("_", " ").strip()


def split_title_year(title: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; a title without a trailing year -> ``(title, None)``."""
    m = _TITLE_YEAR.match(title.strip())
    return (m["title"], int(m["year"])) if m else (title.strip(), None)


@dataclass
class Item:
    """One catalogue item (public data)."""

    id: int
    title: str
    year: int | None = None
    genres: list[str] = field(default_factory=list)
    abstract: str = ""
    #: relation -> entities (URIs or labels), in file order; relation names are those of kg.schema
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


def default_data_dir() -> Path:
    """The data directory: ``$FEDXREC_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("FEDXREC_DATA_DIR", "data"))


# ------------------------------------------------------------------------------- lines and fields


def open_text(path: Path, encoding: str = "utf-8") -> TextIO:
    """Open a text file (gzip-compressed if it ends in ``.gz``); raises :class:`DataError` if missing."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.suffix == ".gz":
        try:
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
        except OSError as e:
            raise DataError(path, f"cannot open gzip file: {e}") from e
    return open(path, encoding=encoding, newline="")


def lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(line number, line without its newline)`` pairs; a truncated or undecodable file is a :class:`DataError`."""
    with open_text(path, encoding) as f:
        try:
            for n, line in enumerate(f, start=1):
                yield n, line.rstrip("\r\n")
        except (EOFError, gzip.BadGzipFile, UnicodeDecodeError) as e:
            raise DataError(path, f"truncated or undecodable file: {e}") from e


def parse_int(value: str, path: Path, line: int, what: str) -> int:
    """``int(value)``, or a :class:`DataError` naming ``what``, the file and the line."""
    try:
        return int(value)
    except ValueError:
        raise DataError(path, f"{what} {value!r} is not an integer", line) from None


def parse_float(value: str, path: Path, line: int, what: str) -> float:
    """A finite ``float(value)``, or a :class:`DataError` naming ``what``, the file and the line."""
    try:
        out = float(value)
    except ValueError:
        raise DataError(path, f"{what} {value!r} is not a number", line) from None
    if not np.isfinite(out):
        raise DataError(path, f"{what} {value!r} is not finite", line)
    return out


def check_header(header: list[str] | None, expected: list[str], path: Path, message: str) -> None:
    """Raise :class:`DataError` (line 1) unless the first fields of ``header`` are ``expected``."""
    if header is None or [h.strip() for h in header[: len(expected)]] != expected:
        raise DataError(path, message, 1)


# ---------------------------------------------------------------------------------------- ratings

RatingRow = tuple[int, int, float, int]


def rating_row(f: list[str], path: Path, n: int, names: tuple[str, str], sep: str) -> RatingRow:
    """Parse ``user, item, rating, timestamp`` fields of line ``n``."""
    if len(f) != 4:
        raise DataError(path, f"expected 4 {sep}-separated fields, got {len(f)}", n)
    return (
        parse_int(f[0], path, n, names[0]),
        parse_int(f[1], path, n, names[1]),
        parse_float(f[2], path, n, "rating"),
        parse_int(f[3], path, n, "timestamp"),
    )


def rating_arrays(rows: list[RatingRow], path: Path) -> tuple[np.ndarray, ...]:
    """``(users, items, ratings, timestamps)`` arrays of the rows; no rows is a :class:`DataError`."""
    if not rows:
        raise DataError(path, "no ratings")
    u, i, r, t = zip(*rows, strict=True)
    return np.array(u, np.int64), np.array(i, np.int64), np.array(r, np.float32), np.array(t, np.int64)


def map_interactions(catalogue: Catalogue, path: Path, arrays: tuple[np.ndarray, ...]) -> Interactions:
    """Interactions with raw item ids mapped to catalogue rows; an id not in the catalogue is a :class:`DataError`."""
    users, raw_items, ratings, ts = arrays
    index = {iid: i for i, iid in enumerate(catalogue.ids)}
    rows = np.empty_like(raw_items)
    for n, iid in enumerate(raw_items.tolist()):
        try:
            rows[n] = index[iid]
        except KeyError:
            raise DataError(path, f"item id {iid} is not in the item file", n + 1) from None
    return Interactions(users, rows, ratings, ts)
