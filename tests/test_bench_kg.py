"""bench_kg helpers on tiny fixtures: cold-item KG priors, cold scoring, and the explanation run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import kg
from shared.config import ENTITY_RERANK
from shared.data import load_ml100k
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
