"""The API ranks as the evaluation does: P1 through ``/v1/score`` == ``central_p1``; top-k == the model's."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from api_fixtures import env
from conftest import write_tiny_ml100k
from fastapi.testclient import TestClient

from server.api.deps import get_service
from server.api.main import create_app
from server.api.service import Service
from server.api.settings import Settings, get_settings
from server.evaluation import central_p1
from shared.backbone import PrefixCache
from shared.checkpoint import save_checkpoint
from shared.config import ModelConfig
from shared.data import load_ml100k
from shared.model import Recommender
from shared.splits import Split, p1_split
from simulations.bench_api import p1_requests, p1_via_api

#: the main job's model (record-level DP: personal user mode, item bias), the fed preset's, and a dot one
MODELS = {
    "dp-personal-cosine": {"user_mode": "personal", "score": "cosine", "item_bias": True},
    "history-cosine": {"user_mode": "history", "score": "cosine", "item_bias": False},
    "history-dot": {"user_mode": "history", "score": "dot", "item_bias": True},
}
HISTORY_LEN = 6  # shorter than every user's history: the model reads only the latest 6


@pytest.fixture(scope="module", params=sorted(MODELS))
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Recommender, Split, list[int], Settings]:
    root = tmp_path_factory.mktemp("p1")
    data = write_tiny_ml100k(root / "data", per_user=20)
    ds = load_ml100k(data)
    split = p1_split(ds.interactions, len(ds.catalogue), seed=0)
    torch.manual_seed(1)
    cache = PrefixCache(0, pooled=torch.randn(len(ds.catalogue), 32))
    cfg = ModelConfig(
        backbone="unused", bottleneck=16, dim=16, history_len=HISTORY_LEN, dropout=0.0, **MODELS[request.param]
    )
    model = Recommender(cfg, cache, num_users=split.num_users)
    with torch.no_grad():  # an arbitrary "trained" state: every shared parameter matters
        model.items.bias.weight.normal_(0, 0.5)
        model.items.proj.weight.mul_(3.0)
        if cfg.user_mode == "history":
            model.user.recency.weight.normal_(0, 1.0)
            model.user.mix.weight.add_(0.3 * torch.randn_like(model.user.mix.weight))
        if cfg.score == "dot":
            model.scale.fill_(2.5)
    model.eval()
    ckpt = save_checkpoint(model, ds.catalogue.ids, root / "ckpt", meta={"source": "tests"})
    e = env(
        data, ckpt, root / "state", max_score_items=200, entity_rerank=0
    )  # the model's order (re-ranking: test_api_rerank)
    s = Settings(**{k[len("FEDXREC_") :].lower(): v for k, v in e.items()})  # type: ignore[arg-type]
    return model, split, ds.catalogue.ids, s


@pytest.fixture
def client(world: tuple[Recommender, Split, list[int], Settings]) -> Iterator[TestClient]:
    s = world[3]
    service = Service.load(s)
    app = create_app()
    app.dependency_overrides[get_service] = lambda: service
    app.dependency_overrides[get_settings] = lambda: s
    with TestClient(app) as c:
        yield c


def _post(client: TestClient):  # type: ignore[no-untyped-def]
    def post(body: dict) -> dict:
        r = client.post("/v1/score", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    return post


@pytest.mark.parametrize("which", ["val", "test"])
def test_p1_through_the_api_equals_the_central_evaluation(
    world: tuple[Recommender, Split, list[int], Settings], client: TestClient, which: str
) -> None:
    model, split, ids, _ = world
    assert all(len(h) > HISTORY_LEN for h, _ in p1_requests(split, ids, which))
    want = central_p1(model, split, which)
    got = p1_via_api(_post(client), split, ids, which)
    assert got[f"{which}-hr@10"] == pytest.approx(want[f"{which}-hr@10"], abs=1e-12)
    assert got[f"{which}-ndcg@10"] == pytest.approx(want[f"{which}-ndcg@10"], abs=1e-9)
    assert len(set(got["ranks"].tolist())) > 5  # ranks that a different scoring would move


def _eval_user_vectors(model: Recommender, split: Split, which: str) -> torch.Tensor:
    """User vectors exactly as ``central_p1`` forms them (no personal parameters)."""
    from shared.training import eval_histories

    v, _ = model.all_item_vectors()
    hist = torch.as_tensor(eval_histories(split, which, model.cfg.history_len))
    mask, hv = hist >= 0, v[hist.clamp_min(0)]
    if model.cfg.user_mode == "history":
        zeros = torch.zeros(len(hist), dtype=torch.long)
        return model.user(zeros, hv, mask) - model.user.personal(zeros)
    w = mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bl,bld->bd", w, hv)


@torch.no_grad()
def test_recommend_top_k_equals_the_evaluation_models_ranking(
    world: tuple[Recommender, Split, list[int], Settings], client: TestClient
) -> None:
    model, split, ids, _ = world
    v, b = model.all_item_vectors()
    users = _eval_user_vectors(model, split, "test")
    for u, (history, _) in enumerate(p1_requests(split, ids, "test")):
        s = (model.scale * (v @ users[u]) + b).numpy()
        s[[ids.index(i) for i in history]] = -np.inf  # the whole history is left out
        order = np.argsort(-s, kind="stable")[:10]
        r = client.post("/v1/recommend", json={"history": history, "k": 10}).json()["items"]
        got = [it["id"] for it in r]
        assert got == [ids[i] for i in order], f"user row {u}"
        assert np.allclose([it["score"] for it in r], s[order], atol=1e-5)
