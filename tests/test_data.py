from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from shared.data import entity_label, load_dataset, load_ml100k, load_movielens_csv, read_triples
from shared.errors import DataError, UnknownItemError


def test_ml100k_reader_latin1_genres_and_kg(tiny_data: Path) -> None:
    ds = load_ml100k(tiny_data)
    assert len(ds.catalogue) == 120
    item7 = ds.catalogue.get(7)
    assert item7.title == "Misérables, Les" and item7.year == 1987
    assert ds.catalogue.get(1).genres == ["Comedy"]
    assert ds.catalogue.get(1).entities["director"] == ["http://dbpedia.org/resource/Director_1"]
    assert ds.catalogue.get(1).abstract == 'Movie 1 is a film, with "quotes".'
    assert "Directed by Director 1." in ds.catalogue.get(1).text()
    assert len(ds.interactions) == 8 * 15
    assert ds.interactions.items.max() < 120  # rows, not raw ids


def test_csv_reader_with_generic_enrichment_never_reads_tags(tiny_csv: Path) -> None:
    ds = load_movielens_csv(tiny_csv)
    cat = ds.catalogue
    assert [it.title for it in cat.items] == ["Toy Story", "American President, The", "Untitled"]
    assert cat.get(2).year == 1995 and cat.get(3).year is None and cat.get(3).genres == []
    assert all("tag" not in it.entities for it in cat.items)  # tags.csv is users' behaviour, not the catalogue
    assert cat.get(1).external_ids == {"imdb": "0114709", "tmdb": "862"} and cat.get(2).external_ids == {
        "imdb": "0112346"
    }
    assert cat.get(1).entities["director"] == ["http://dbpedia.org/resource/John_Lasseter"]
    assert cat.get(1).abstract == "A film about toys."
    assert len(ds.interactions) == 4 and ds.interactions.ratings[1] == pytest.approx(3.5)
    with pytest.raises(UnknownItemError, match="99"):
        cat.get(99)


@pytest.mark.parametrize(
    ("fname", "content", "line", "needle"),
    [
        ("u.data", "1\t2\t3\t4\n1\t2\tx\t4\n", 2, "rating 'x'"),
        ("u.data", "1\t2\t3\n", 1, "4 tab-separated"),
        ("u.data", "1\t999\t3\t4\n", 1, "item id 999"),
        ("u.item", "1|Bad|x\n", 1, "fields"),
    ],
)
def test_malformed_ml100k_names_file_and_line(
    tiny_data: Path, fname: str, content: str, line: int, needle: str
) -> None:
    path = tiny_data / "ml-100k" / fname
    path.write_text(content)
    with pytest.raises(DataError) as e:
        load_ml100k(tiny_data)
    assert f"{fname}:{line}" in str(e.value) and needle in str(e.value)


def test_malformed_csv_and_triples(tiny_csv: Path) -> None:
    (tiny_csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,1\n")
    with pytest.raises(DataError, match=r"ratings.csv:3: expected 4"):
        load_movielens_csv(tiny_csv)
    bad = tiny_csv / "bad.tsv"
    bad.write_text("1\tdirector\tX\nnot-an-id\tdirector\tY\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: item id 'not-an-id'"):
        list(read_triples(bad))


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv.gz"
    path.write_bytes(gzip.compress(b"1\tdirector\tX\n" * 1000)[:-30])
    with pytest.raises(DataError, match="t.tsv.gz"):
        list(read_triples(path))


def test_missing_dataset_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset("nope", tmp_path)


def test_entity_label() -> None:
    assert entity_label("http://dbpedia.org/resource/John_Lasseter") == "John Lasseter"
    assert entity_label("http://dbpedia.org/resource/Category:1995_films") == "1995 films"
    assert entity_label("plain label") == "plain label"


@pytest.mark.slow
def test_real_ml100k_counts(data_dir: Path) -> None:
    ds = load_ml100k(data_dir)
    assert len(ds.interactions) == 100_000 and len(ds.catalogue) == 1682
    assert len(set(ds.interactions.users.tolist())) == 943
    assert ds.catalogue.get(543).title.startswith("Misérables")
    assert sum(1 for it in ds.catalogue.items if it.abstract) > 1400
