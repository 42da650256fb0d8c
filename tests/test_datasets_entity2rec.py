"""The entity2rec KG reader, the relation vocabulary and the registry (shared.datasets), on hand-written files."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
from conftest import real_data_dir

from kg.graph import build_graph
from kg.paths import explain
from kg.schema import ENTITY_RELATIONS, RELATION_WEIGHTS, RELATIONS
from shared.config import DATASETS
from shared.datasets import RELATION_NAMES, dataset_names, load_dataset, load_ml100k, read_entity2rec
from shared.datasets.enrichment import RELATION_VOCABULARY, read_triples, relation_name
from shared.errors import DataError

R = "http://dbpedia.org/resource/"
TOY, JUMANJI, HEAT, ELSEWHERE = R + "Toy_Story", R + "Jumanji", R + "Heat_(1995_film)", R + "Elsewhere"
NEWMAN, UNKRICH, LASSETER, GOLDENTHAL = R + "Randy_Newman", R + "Lee_Unkrich", R + "John_Lasseter", R + "Goldenthal"
USER_TAG = "secret user tag"  # a user's own words: must never reach the catalogue or the KG


def write_entity2rec_data(root: Path) -> Path:
    """A data directory: ml-latest-small (with tags.csv) and an entity2rec KG with an unknown property."""
    ml = root / "ml-latest-small"
    ml.mkdir(parents=True)
    (ml / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Animation|Comedy\n"
        "2,Jumanji (1995),Adventure\n"
        "3,Heat (1995),Crime\n"
        "4,Untitled (2001),Drama\n"
    )
    (ml / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.0,11\n1,3,5.0,12\n2,2,4.0,13\n2,4,2.0,14\n2,1,3.5,15\n"
    )
    (ml / "tags.csv").write_text(
        f"userId,movieId,tag,timestamp\n1,1,{USER_TAG},20\n2,2,{USER_TAG},21\n2,4,Randy Newman,22\n"
    )
    kg = root / "kg" / "entity2rec-ml1m-dbpedia"
    (kg / "graphs").mkdir(parents=True)
    (kg / "mappings.tsv").write_text(
        f"1\tToy Story (1995)\t{TOY}\n2\tJumanji (1995)\t{JUMANJI}\n3\tHeat (1995)\t{HEAT}\n999\tElsewhere (1990)\t{ELSEWHERE}\n"
    )
    edgelists = {
        "dbo_musicComposer": [(TOY, NEWMAN), (JUMANJI, NEWMAN), (HEAT, GOLDENTHAL), (ELSEWHERE, NEWMAN)],
        "dbo_editing": [(TOY, UNKRICH), (R + "Not_Mapped", UNKRICH), (R + "Also_Not_Mapped", UNKRICH)],
        "dbo_director": [(TOY, LASSETER), (TOY, LASSETER)],  # a repeated edge counts once
        "dbo_foo": [(TOY, R + "Foo_1"), (HEAT, R + "Foo_2")],
    }
    for name, edges in edgelists.items():
        (kg / "graphs" / f"{name}.edgelist").write_text("".join(f"{a} {b}\n" for a, b in edges))
    return root


@pytest.fixture
def e2r_data(tmp_path: Path) -> Path:
    return write_entity2rec_data(tmp_path / "data")


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and needle in r.getMessage()]


def test_triples_land_on_the_right_items_with_our_relation_names(e2r_data: Path) -> None:
    cat = load_dataset("ml-latest-small", e2r_data).catalogue
    assert cat.get(1).entities == {"director": [LASSETER], "editor": [UNKRICH], "composer": [NEWMAN]}
    assert cat.get(2).entities == {"composer": [NEWMAN]}
    assert cat.get(3).entities == {"composer": [GOLDENTHAL]}
    assert cat.get(4).entities == {}  # an item without a KG entity is fine
    assert "Directed by John Lasseter." in cat.get(1).text()


def test_unknown_property_and_unmapped_rows_warn_once_per_file(
    e2r_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        cat = load_dataset("ml-latest-small", e2r_data).catalogue
    foo = _warnings(caplog, "dbo_foo.edgelist")
    assert len(foo) == 1 and "'dbo:foo': 2" in foo[0]
    assert all(
        "foo" not in rel and not any("Foo" in e for e in ents) for it in cat.items for rel, ents in it.entities.items()
    )
    unmapped = _warnings(caplog, "films not in")
    assert len(unmapped) == 1 and "dbo_editing.edgelist: 2 edges" in unmapped[0]
    outside = _warnings(caplog, "outside the catalogue")
    assert len(outside) == 1 and "1 rows" in outside[0]  # id 999 is mapped but not in movies.csv


def test_tags_never_become_kg_edges(e2r_data: Path) -> None:
    cat = load_dataset("ml-latest-small", e2r_data).catalogue
    for it in cat.items:
        assert "tag" not in it.entities
        assert not any(USER_TAG in e for ents in it.entities.values() for e in ents)
        assert USER_TAG not in it.text()
    assert cat.get(4).entities == {}  # its tag "Randy Newman" did not link it to the composer
    graph = build_graph(cat.items)  # the default rejects any relation outside the schema
    assert {k for _, _, k in graph.edges(keys=True)} <= set(RELATIONS)
    assert not any(USER_TAG in str(n) or USER_TAG in d["label"] for n, d in graph.nodes(data=True))
    assert [k for _, _, k in graph.out_edges("item:4", keys=True)] == ["has_genre", "released_in_decade"]


def test_composer_path_is_explained(e2r_data: Path) -> None:
    graph = build_graph(load_dataset("ml-latest-small", e2r_data).catalogue.items)
    ex = explain(graph, [2], 1)
    assert ex.sentence == "Because you watched Jumanji (1995), also scored by composer Randy Newman."


@pytest.mark.parametrize(
    ("relpath", "content", "where", "needle"),
    [
        ("mappings.tsv", f"1\tToy Story (1995)\t{TOY}\n2\tJumanji (1995)\n", "mappings.tsv:2", "movieId<TAB>title"),
        ("mappings.tsv", f"x\tToy Story (1995)\t{TOY}\n", "mappings.tsv:1", "movieId 'x'"),
        ("mappings.tsv", f"1\tToy Story\t{TOY}\n1\tAgain\t{JUMANJI}\n", "mappings.tsv:2", "mapped twice"),
        ("graphs/dbo_director.edgelist", f"{TOY} {LASSETER}\n\n{TOY}\n", "dbo_director.edgelist:3", "got 1"),
        ("graphs/dbo_musicComposer.edgelist", f"{TOY} {NEWMAN} extra\n", "dbo_musicComposer.edgelist:1", "got 3"),
    ],
)
def test_malformed_line_names_file_and_line(
    e2r_data: Path, relpath: str, content: str, where: str, needle: str
) -> None:
    (e2r_data / "kg" / "entity2rec-ml1m-dbpedia" / relpath).write_text(content)
    with pytest.raises(DataError) as e:
        load_dataset("ml-latest-small", e2r_data)
    assert where in str(e.value) and needle in str(e.value)
    assert e.value.line == int(where.rsplit(":", 1)[1])


def test_missing_graphs_dir_is_named(e2r_data: Path) -> None:
    root = e2r_data / "kg" / "entity2rec-ml1m-dbpedia"
    for p in (root / "graphs").iterdir():
        p.unlink()
    (root / "graphs").rmdir()
    with pytest.raises(DataError, match="graphs"):
        read_entity2rec(root)


def test_without_the_kg_items_carry_movies_csv_only(e2r_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = e2r_data / "kg" / "entity2rec-ml1m-dbpedia"
    root.rename(e2r_data / "kg" / "elsewhere")
    with caplog.at_level(logging.WARNING):
        cat = load_dataset("ml-latest-small", e2r_data).catalogue
    assert all(it.entities == {} for it in cat.items) and len(_warnings(caplog, "no entity2rec KG")) == 1


def test_generic_triples_beside_the_kg_and_unknown_relations_warn_once(
    e2r_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (e2r_data / "ml-latest-small" / "triples.tsv").write_text(
        "# item\trelation\tentity\n"
        f"4\tdbo:musicComposer\t{NEWMAN}\n"
        f"4\thttp://dbpedia.org/ontology/editing\t{UNKRICH}\n"
        "4\tdirector\tA Director\n"
        "4\ttag\tfunny\n4\ttag\tpixar\n3\tdbo:foo\tX\n"
    )
    (e2r_data / "ml-latest-small" / "abstracts.tsv").write_text("4\tAn untitled film.\n")
    with caplog.at_level(logging.WARNING):
        cat = load_dataset("ml-latest-small", e2r_data).catalogue
    assert cat.get(4).entities == {"composer": [NEWMAN], "editor": [UNKRICH], "director": ["A Director"]}
    assert cat.get(4).abstract == "An untitled film."
    assert cat.get(1).entities["composer"] == [NEWMAN]  # the entity2rec KG still applies
    warned = _warnings(caplog, "triples.tsv")
    assert len(warned) == 1 and "'tag': 2" in warned[0] and "'dbo:foo': 1" in warned[0]


def test_frankgraphbench_column_outside_the_vocabulary_warns_once(
    tiny_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tiny_data / "kg" / "frankgraphbench-ml100k-dbpedia" / "dbpedia-live-2024" / "enriched.csv"
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0] + ",foo::string_list"] + [r + ",X::Y" for r in rows[1:]]) + "\n")
    with caplog.at_level(logging.WARNING):
        cat = load_ml100k(tiny_data).catalogue
    warned = _warnings(caplog, "enriched.csv: relations not in the vocabulary")
    assert len(warned) == 1 and f"'foo': {2 * (len(rows) - 1)}" in warned[0]
    assert all("foo" not in it.entities for it in cat.items) and cat.get(1).entities["director"]


def test_vocabulary_names_the_schema_relations() -> None:
    assert set(RELATION_NAMES) == set(ENTITY_RELATIONS)
    assert all(RELATIONS[r].tail == "person" for r in ("composer", "editor"))
    assert RELATION_WEIGHTS["producer"] > RELATION_WEIGHTS["composer"] == RELATION_WEIGHTS["editor"]
    assert RELATION_WEIGHTS["editor"] > RELATION_WEIGHTS["subject"]
    assert relation_name("dbo:musicComposer") == "composer" and relation_name("dbo:editing") == "editor"
    assert relation_name("http://purl.org/dc/terms/subject") == "subject" and relation_name("editor") == "editor"
    assert relation_name("tag") is None and relation_name("dbo:foo") is None
    assert RELATION_VOCABULARY["dbo:director"] == "director"


def test_every_configured_dataset_is_registered() -> None:
    assert set(DATASETS) <= set(dataset_names())


def test_read_triples_is_lazy_but_warns_after_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("1\tfoo\tA\n1\tdirector\tB\n2\tfoo\tC\n")
    with caplog.at_level(logging.WARNING):
        assert list(read_triples(path)) == [(1, "director", "B")]
    assert len(_warnings(caplog, "t.tsv")) == 1 and "'foo': 2" in caplog.text


@pytest.mark.slow
def test_real_ml_latest_small_with_the_entity2rec_kg() -> None:
    d = real_data_dir()
    if d is None or not (d / "ml-latest-small" / "ratings.csv").exists():
        pytest.skip("real ml-latest-small not available")
    if not (d / "kg" / "entity2rec-ml1m-dbpedia" / "mappings.tsv").exists():
        pytest.skip("entity2rec KG not available")
    ds = load_dataset("ml-latest-small", d)
    assert len(ds.catalogue) == 9742 and len(ds.interactions) == 100_836
    with_kg = [it for it in ds.catalogue.items if it.entities]
    assert 2000 < len(with_kg) < 3500  # measured: 2,574 of 9,742
    per_relation = Counter(r for it in with_kg for r, ents in it.entities.items() for _ in ents)
    assert set(per_relation) <= set(ENTITY_RELATIONS) and "tag" not in per_relation
    assert per_relation["composer"] > 1000 and per_relation["editor"] > 1000 and per_relation["starring"] > 5000
    pulp = ds.catalogue.get(296).entities
    assert pulp["director"] == [R + "Quentin_Tarantino"] and pulp["editor"] == [R + "Sally_Menke"]
    graph = build_graph(ds.catalogue.items)  # every relation is in the schema
    assert sum(1 for _, _, k in graph.edges(keys=True) if k == "composer") == per_relation["composer"]


def test_a_device_loads_the_servers_catalogue_kg_included(e2r_data: Path) -> None:
    """A device pointed at the data directory, or at one catalogue directory holding the KG, builds the
    same item texts as the server (the item-feature cache and the shared model depend on them)."""
    import shutil

    from client.data import load_catalogue

    server = load_dataset("ml-latest-small", e2r_data).catalogue
    texts = {it.id: it.text() for it in server.items}
    device = load_catalogue(e2r_data, dataset="ml-latest-small")
    assert {it.id: it.text() for it in device.items} == texts
    one_dir = e2r_data.parent / "catalogue"
    shutil.copytree(e2r_data / "kg" / "entity2rec-ml1m-dbpedia", one_dir)
    shutil.copy(e2r_data / "ml-latest-small" / "movies.csv", one_dir)
    assert {it.id: it.text() for it in load_catalogue(one_dir).items} == texts
    assert "composer" in load_catalogue(one_dir).get(1).entities
