"""bench_kg helpers on tiny fixtures: cold-item KG priors, cold scoring, and the explanation run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_ml100k

import kg
from shared.checkpoint import save_checkpoint
from shared.config import ENTITY_RERANK, Config, ModelConfig
from shared.data import load_ml100k
from shared.pipeline import build_model, prepare
from shared.splits import Split
from simulations import bench_kg


def test_cold_graph_and_priors(tiny_data: Path) -> None:
    ds = load_ml100k(tiny_data)
    cold_rows = np.array([0, 4, 9])  # items 1, 5, 10 (KG-enriched)
    warm_rows = np.setdiff1d(np.arange(len(ds.catalogue)), cold_rows)
    graph = bench_kg.cold_graph(ds, cold_rows)
    assert all(f"item:{ds.catalogue.ids[r]}" in graph for r in range(len(ds.catalogue)))
    rng = np.random.default_rng(0)
    n = len(ds.catalogue)
    cm = bench_kg.ColdModel(
        rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=n).astype(np.float32), np.zeros((1, 4)), 1.0, {}
    )
    vecs, bias, fallback = bench_kg.kg_priors(graph, ds, cm, cold_rows, warm_rows, max_neighbours=5)
    assert vecs.shape == (3, 4) and bias.shape == (3,) and fallback == 0
    # the bias is the neighbours' weighted mean bias, with the weights of the vector prior
    ids = ds.catalogue.ids
    found = [(i, w) for i, w in kg.neighbours(graph, ids[0]) if ids.index(i) in set(warm_rows.tolist())][:5]
    w = np.array([x for _, x in found])
    expect_b = (w * cm.bias[[ids.index(i) for i, _ in found]]).sum() / w.sum()
    expect_v = (w[:, None] * cm.vectors[[ids.index(i) for i, _ in found]]).sum(0) / w.sum()
    assert bias[0] == pytest.approx(expect_b, rel=1e-5)
    np.testing.assert_allclose(vecs[0], expect_v, rtol=1e-5)


@pytest.mark.parametrize("score", ["cosine", "dot"])
def test_cold_scorer_normalises_as_the_api_stores_a_new_item(tiny_data: Path, score: str) -> None:
    """Every scored cold vector is what ServingModel.normalise would store: unit (cosine) or capped (dot)."""
    ds = load_ml100k(tiny_data)
    cold_rows = np.array([0, 4, 9])
    warm_rows = np.setdiff1d(np.arange(len(ds.catalogue)), cold_rows)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(ds.catalogue), 4)).astype(np.float32)
    if score == "cosine":
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cm = bench_kg.ColdModel(vecs, np.zeros(len(vecs), np.float32), np.zeros((1, 4)), 1.0, {}, score=score)
    scorer = bench_kg.ColdScorer(cm, bench_kg.cold_graph(ds, cold_rows), ds, cold_rows, warm_rows)
    longest = float(np.linalg.norm(vecs, axis=1).max())
    for knobs in scorer.grid():
        v, _ = scorer(knobs)
        n = np.linalg.norm(v, axis=1)
        if score == "cosine":
            np.testing.assert_allclose(n, 1.0, rtol=1e-5)
        else:
            assert (n <= longest * (1 + 1e-5)).all()
    mixed, _ = scorer({"prior": "full", "alpha": 0.5, "max_neighbours": None, "bias_weight": None, "renorm": False})
    raw, _ = scorer._mix({"prior": "full", "alpha": 0.5, "max_neighbours": None, "bias_weight": None, "renorm": False})
    if score == "cosine":  # a mean of unit vectors is shorter than one: the API lengthens it back
        assert (np.linalg.norm(raw, axis=1) < 1 - 1e-3).any()
        np.testing.assert_allclose(mixed, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)
    else:
        np.testing.assert_allclose(mixed, raw, rtol=1e-6)  # a convex mix never exceeds the longest


def test_cold_eval_hits_and_recall() -> None:
    cold_rows = np.arange(100, 205)  # 105 cold rows, 2 users
    negs = np.stack([cold_rows[5:104], cold_rows[6:105]])
    split = Split(
        users=np.array([1, 2]),
        train=[np.array([0, 1]), np.array([2])],
        train_ts=[np.array([1, 2]), np.array([1])],
        val=np.array([3, 4]),
        test=np.array([100, 101]),
        val_negatives=np.zeros((2, 99), np.int64),
        test_negatives=negs,
        num_items=205,
        cold_items=cold_rows,
        seen=[np.array([0, 1, 3, 100, 102]), np.array([2, 4, 101])],
    )
    users = np.eye(2, 3, dtype=np.float32)  # user 0 likes dim 0, user 1 dim 1
    cm = bench_kg.ColdModel(np.zeros((205, 3), np.float32), np.zeros(205, np.float32), users, 1.0, {})
    ev = bench_kg.ColdEval(split, cm, cold_rows, np.array([0, 1]))
    vecs = np.zeros((105, 3), np.float32)
    vecs[0, 0] = vecs[2, 0] = 1.0  # user 0's cold items 100 and 102 score high for user 0
    vecs[5:30, 1] = 1.0  # user 1 prefers 25 other cold items to its own (101)
    hits, recall = ev.per_user(vecs, np.zeros(105, np.float32))
    assert hits.tolist() == [1.0, 0.0]
    assert recall[0] == 1.0 and recall[1] == 0.0


def test_cold_knobs_are_tuned_on_other_items_than_those_reported() -> None:
    rng = np.random.default_rng(0)
    n_items, cold_rows = 400, np.arange(200, 400)
    seen = [np.unique(np.r_[rng.choice(200, 10), rng.choice(cold_rows, rng.integers(2, 30))]) for _ in range(60)]
    test = np.array([int(rng.choice(s[s >= 200])) for s in seen])
    split = Split(
        users=np.arange(60),
        train=[s[s < 200] for s in seen],
        train_ts=[np.arange((s < 200).sum()) for s in seen],
        val=np.full(60, -1),
        test=test,
        val_negatives=np.zeros((60, 99), np.int64),
        test_negatives=np.zeros((60, 99), np.int64),
        num_items=n_items,
        cold_items=cold_rows,
        seen=seen,
    )
    tune, report = bench_kg.cold_item_halves(split, cold_rows, seed=0)
    assert not set(tune.rows.tolist()) & set(report.rows.tolist())
    assert sorted([*tune.rows.tolist(), *report.rows.tolist()]) == cold_rows.tolist()
    assert sorted([*tune.users.tolist(), *report.users.tolist()]) == list(range(60))
    for half in (tune, report):
        np.testing.assert_array_equal(cold_rows[half.cols], half.rows)
        rows = set(half.rows.tolist())
        for u, negs in zip(half.users.tolist(), half.negatives, strict=True):
            assert int(test[u]) in rows  # the user's target is one of this half's items
            assert set(negs.tolist()) <= rows and not set(negs.tolist()) & set(seen[u].tolist())
            assert len(set(negs.tolist())) == len(negs)
        # every candidate of the half's evaluation is one of its items
        cm = bench_kg.ColdModel(
            np.zeros((n_items, 3), np.float32), np.zeros(n_items, np.float32), np.ones((60, 3)), 1.0, {}
        )
        ev = bench_kg.ColdEval(split, cm, half.rows, half.users, half.negatives)
        assert (
            ev.cand.max() < len(half.rows)
            and (ev.cand[:, 0] == [half.rows.tolist().index(test[u]) for u in half.users]).all()
        )


def test_explain_run_on_tiny_data(tiny_data: Path, tiny_bert: str, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    args = argparse.Namespace(
        dataset="ml-100k",
        data_dir=str(tiny_data),
        cache_dir=str(tmp_path / "cache"),
        backbone=tiny_bert,
        checkpoint=str(ckpt),
        train_if_missing=True,
        epochs=1,
        recency_weight=0.5,
        similarity_weight=0.5,
        popularity_share=0.5,
        rerank_weight=0.3,
        entity_rerank=ENTITY_RERANK,
        explain_window=0,
        budget_min=0.0,
        max_users=0,
    )
    out = bench_kg.run_explain(args)
    assert (ckpt / "fedxrec.json").exists()
    assert out["users"] == 8 and out["faithfulness"] == 1.0
    for key in ("fidelity@10", "fidelity@10_specific", "entity_share@10", "lir", "sep", "etd", "pn_score", "pn_rank"):
        assert 0.0 <= out[key] <= 1.0
    assert out["entity_share@10"] <= out["fidelity@10_specific"] <= out["fidelity@10"]
    kinds = out["first_path_kinds"]
    assert set(kinds) == {"person", "company", "category", "coarse", "none"}
    assert sum(kinds.values()) == pytest.approx(1.0, abs=1e-3)
    assert kinds["person"] + kinds["company"] == pytest.approx(out["entity_share@10"], abs=1e-3)
    assert kinds["none"] == pytest.approx(1 - out["fidelity@10"], abs=1e-3)
    assert 0.0 <= out["rerank"]["entity_share@10"] <= 1.0
    toward = out["rerank_entity"]
    assert [r["weight"] for r in toward] == list(bench_kg.ENTITY_RERANK_WEIGHTS)
    served = out["served_order"]
    for r in toward:  # re-ranking toward person/company explanations never lowers their share
        assert served["model_order_entity_share@10"] - 1e-3 <= r["entity_share@10"] <= 1.0
        assert 0.0 <= r["ndcg@10_after"] <= 1.0
    # the headline figures are of the served order: the grid's point at the API's weight
    (at_default,) = [r for r in toward if r["weight"] == ENTITY_RERANK]
    assert at_default["entity_share@10"] == out["entity_share@10"]
    assert at_default["ndcg@10_after"] == served["ndcg@10_served"]
    assert served["ndcg@10_model"] == out["rerank"]["ndcg@10_before"]
    assert out["ms_per_user"] > 0
    assert 0.0 <= out["rerank"]["ndcg@10_after"] <= 1.0
    json.dumps(out)  # what is merged into summary.json


def _cold_data(root: Path, *, items: int = 600, users: int = 60, per_user: int = 25) -> Path:
    """The tiny ml-100k layout (and KG) with a catalogue large enough for 99 cold negatives per user."""
    write_tiny_ml100k(root)
    rng = np.random.default_rng(0)
    d = root / "ml-100k"
    lines = []
    for i in range(1, items + 1):
        flags = ["0"] * 5
        flags[1 + i % 4] = "1"
        lines.append(f"{i}|Movie {i} ({1980 + i % 20})|01-Jan-{1980 + i % 20}||http://x|" + "|".join(flags))
    (d / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rows = []
    for u in range(1, users + 1):
        for t, it in enumerate(rng.choice(np.arange(1, items + 1), size=per_user, replace=False)):
            rows.append(f"{u}\t{it}\t{1 + (t % 5)}\t{880000000 + 1000 * t + u}")
    (d / "u.data").write_text("\n".join(rows) + "\n")
    return root


def _cold_args(data: Path, tiny_bert: str, tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        dataset="ml-100k",
        data_dir=str(data),
        cache_dir=str(tmp_path / "cache"),
        backbone=tiny_bert,
        cold_epochs=1,
        work_dir=str(tmp_path / "work"),
        retrain=False,
        budget_min=0.0,
        seed=0,
    )


def test_cold_run_chooses_variants_and_knobs_without_the_report_half(
    tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _cold_data(tmp_path / "data")
    args = _cold_args(data, tiny_bert, tmp_path)
    # a smaller grid of each kind of knob, to keep the test quick
    monkeypatch.setattr(bench_kg, "ALPHAS", (0.0, 0.5, 1.0))
    monkeypatch.setattr(bench_kg, "NEIGHBOUR_CAPS", (5, None))
    monkeypatch.setattr(bench_kg, "BIAS_WEIGHTS", (None, 1.0))
    monkeypatch.setattr(bench_kg, "RESIDUAL_WEIGHTS", (0.5, 2.0))
    monkeypatch.setattr(bench_kg, "RESIDUAL_ALPHAS", (0.5, 1.0))
    out = bench_kg.run_cold(args)  # trains (and caches) every variant
    settings = out["provenance"]["settings"]
    names = [v.name for v in bench_kg.COLD_VARIANTS]
    assert list(settings["variants"]) == names
    for m in ("random", "text", "kg", "text+kg"):
        assert 0.0 <= out[m]["hr@10"] <= 1.0 and 0.0 <= out[m]["recall@20"] <= 1.0
    specs = {v.name: v for v in bench_kg.COLD_VARIANTS}
    for name, var in settings["variants"].items():
        assert var["model"]["id_residual"] == specs[name].id_residual
        assert (var["model"]["score"], var["model"]["item_bias"]) == (specs[name].score, specs[name].item_bias)
        assert set(var["tuning_half"]) >= {"text", "kg", "text+kg"}
        assert ("text+kg_residual_prior" in var["tuning_half"]) == specs[name].id_residual
        best = var["tuning_half"]["text+kg"]["hr@10"]
        assert best >= max(var["tuning_half"][m]["hr@10"] for m in ("text", "kg"))
    assert set(settings["chosen_variant"].values()) <= set(names)
    json.dumps(out)

    # The same run with every report-half cold item's vector and every report-half user's vector
    # changed, under a metric that reads every score it is given: if any choice saw a report-half
    # item or user, some tuning figure, and so some choice, would move.
    def metric(self: bench_kg.ColdEval, vecs: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = float((self.cm.users[self.users] @ vecs.T).sum() + bias.sum() + (self.cand * 0.37).sum())
        f = np.full(len(self.users), abs(x) * 1e3 % 1.0)
        return f, f

    monkeypatch.setattr(bench_kg.ColdEval, "per_user", metric)
    plain = bench_kg.run_cold(args)["provenance"]["settings"]
    extract = bench_kg._extract

    def shaken(model: object, split: Split) -> bench_kg.ColdModel:
        cm = extract(model, split)  # type: ignore[arg-type]
        assert split.cold_items is not None
        _, report = bench_kg.cold_item_halves(split, np.sort(split.cold_items), args.seed)
        rng = np.random.default_rng(7)
        cm.vectors[report.rows] += rng.normal(size=cm.vectors[report.rows].shape).astype(np.float32)
        cm.users[report.users] += rng.normal(size=cm.users[report.users].shape).astype(np.float32)
        return cm

    monkeypatch.setattr(bench_kg, "_extract", shaken)
    moved = bench_kg.run_cold(args)
    for key in ("chosen_variant", "chosen_knobs"):
        assert moved["provenance"]["settings"][key] == plain[key]
    for name in names:
        assert (
            moved["provenance"]["settings"]["variants"][name]["tuning_half"] == plain["variants"][name]["tuning_half"]
        )
    # ... while the report half did change under it
    assert moved["provenance"]["settings"]["variants"] != plain["variants"]


def _one_tower_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The smallest grid of each kind of knob (one tower's tests): quick, and every prior kind still tried."""
    monkeypatch.setattr(bench_kg, "ALPHAS", (0.0, 0.5, 1.0))
    monkeypatch.setattr(bench_kg, "NEIGHBOUR_CAPS", (5, None))  # None: the text fallback's key
    monkeypatch.setattr(bench_kg, "BIAS_WEIGHTS", (None,))
    monkeypatch.setattr(bench_kg, "RESIDUAL_WEIGHTS", (0.5,))
    monkeypatch.setattr(bench_kg, "RESIDUAL_ALPHAS", (1.0,))


def test_cold_k1_trains_both_towers_alike_and_reports_the_top_layer_one(
    tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simulations import bench_core

    args = _cold_args(_cold_data(tmp_path / "data"), tiny_bert, tmp_path)
    _one_tower_grid(monkeypatch)
    monkeypatch.setattr(bench_core, "K_TRAIN", {"batch_size": 64, "epochs": 1})
    out = bench_kg.run_cold_k(args)
    settings = out["provenance"]["settings"]
    towers = settings["towers"]
    assert [t["model"]["top_layers"] for t in towers.values()] == [0, 1]
    assert towers["k1"]["model"]["adapter"] == "lora"
    assert all(t["model"]["id_residual"] for t in towers.values())
    assert settings["train"]["batch_size"] == 64 and settings["train"]["epochs"] == 1
    for figs in (out, out["k0_same_training"]):
        for m in bench_kg.COLD_K_METHODS:
            assert 0.0 <= figs[m]["hr@10"] <= 1.0 and 0.0 <= figs[m]["recall@20"] <= 1.0
    assert out["hr@10"] == out["text+kg"]["hr@10"]
    assert sorted((tmp_path / "work").glob("cold-ml-100k-id-k*.pt")) != []  # each tower cached
    json.dumps(out)


def test_cold_fed_scores_a_checkpoint_of_the_cold_split_and_refuses_any_other(
    tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.errors import CheckpointError

    args = _cold_args(_cold_data(tmp_path / "data"), tiny_bert, tmp_path)
    _one_tower_grid(monkeypatch)
    cfg = Config(data=bench_kg._cold_data(args), model=ModelConfig(backbone=tiny_bert, user_mode="history"))
    prep = prepare(cfg, progress=False)
    model = build_model(cfg.model, prep, prep.split.num_users, seed=0)
    ids = prep.dataset.catalogue.ids
    settings = {"data.cold-fraction": bench_kg.COLD_FRACTION, "data.split-seed": 0}
    good = save_checkpoint(model, ids, tmp_path / "fed-cold", meta={"round": 3, "settings": settings})
    args.cold_checkpoint = str(good)
    out = bench_kg.run_cold_fed(args)
    for m in bench_kg.COLD_K_METHODS:
        assert 0.0 <= out[m]["hr@10"] <= 1.0 and 0.0 <= out[m]["recall@20"] <= 1.0
    assert out["provenance"]["settings"]["checkpoint_meta"]["round"] == 3
    json.dumps(out)

    # a checkpoint of another split (or one that does not say) is refused, naming it
    for name, meta in (
        ("p1", {"settings": {**settings, "data.cold-fraction": 0.0}}),
        ("old", {"settings": {}}),
    ):
        args.cold_checkpoint = str(save_checkpoint(model, ids, tmp_path / name, meta=meta))
        with pytest.raises(CheckpointError, match=name):
            bench_kg.run_cold_fed(args)
    args.cold_checkpoint = str(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="bench fed --presets fed-cold"):
        bench_kg.run_cold_fed(args)
