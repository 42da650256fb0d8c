"""The privacy-audit statistics and the fault-injection client, on hand-computed cases (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from client.state import record_of
from server.strategy import check_update
from shared.backbone import PrefixCache
from shared.config import ModelConfig
from shared.model import Recommender
from simulations.audit_apps import HUGE, corrupt, poison_reply, upload_of
from simulations.audit_privacy import (
    advantage,
    attacker_user_vectors,
    auc,
    leak_rankings,
    precision_at_k,
    random_precision,
)


def test_auc_hand_computed() -> None:
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5  # a tie counts one half
    # pairs (1,2) lose, (3,2) win -> 1/2; (3, 2) and (3, 3): one win and one tie -> 0.75
    assert auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5
    assert auc(np.array([3.0]), np.array([2.0, 3.0])) == 0.75


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    m, n = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairwise = ((m[:, None] > n[None, :]) + 0.5 * (m[:, None] == n[None, :])).mean()
    assert auc(m, n) == pytest.approx(pairwise)


def test_advantage_hand_computed() -> None:
    assert advantage(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    # threshold 3: TPR 1/2, FPR 0
    assert advantage(np.array([1.0, 3.0]), np.array([2.0])) == 0.5
    assert advantage(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        advantage(np.array([]), np.array([1.0]))


def test_precision_and_random_baseline() -> None:
    assert precision_at_k(np.array([5, 1, 2, 9]), np.array([1, 9]), k=4) == 0.5
    assert precision_at_k(np.arange(20), np.array([0, 1, 2]), k=10) == 0.3
    assert random_precision(50, 1000) == 0.05
    with pytest.raises(ValueError, match="k must be > 0"):
        precision_at_k(np.arange(3), np.arange(3), k=0)


def _tiny_model(id_residual: bool = False, user_mode: str = "personal") -> Recommender:
    torch.manual_seed(0)
    cache = PrefixCache(top_layers=0, pooled=torch.randn(12, 16))
    cfg = ModelConfig(dim=8, bottleneck=4, id_residual=id_residual, user_mode=user_mode, history_len=4, dropout=0.0)
    return Recommender(cfg, cache, 1)


def test_leak_rankings_put_raised_items_first() -> None:
    model = _tiny_model(id_residual=True)
    before = {k: v.clone() for k, v in model.shared_state().items()}
    after = {k: v.clone() for k, v in before.items()}
    after["items.bias.weight"][[3, 7]] += 1.0
    after["items.id_residual.weight"][5] += 2.0
    r = leak_rankings(model, before, after)
    assert set(r["bias"][:2].tolist()) == {3, 7}
    assert set(r["score"][:2].tolist()) == {3, 7}  # a bias raise raises the score for any probe
    assert r["residual"][0] == 5
    # the model is left at the global parameters
    assert all(torch.equal(model.shared_state()[k], before[k]) for k in before)


def test_attacker_vectors_use_known_items_only() -> None:
    model = _tiny_model()
    u = attacker_user_vectors(model, np.array([[1, 2], [3, -1]]))
    v, _ = model.all_item_vectors()
    assert torch.allclose(u[0], (v[1] + v[2]) / 2) and torch.allclose(u[1], v[3])
    hist = attacker_user_vectors(_tiny_model(user_mode="history"), np.array([[1, 2]]))
    assert hist.shape == (1, 8)


def _arrays() -> dict[str, np.ndarray]:
    return {"a.weight": np.ones((3, 4), np.float16), "b": np.zeros(2, np.float16)}


@pytest.mark.parametrize(
    ("mode", "rnd"), [("nan", 1), ("inf", 1), ("huge", 1), ("cycle", 1), ("cycle", 2), ("cycle", 3)]
)
def test_corrupt_update_is_rejected_by_server_hygiene(mode: str, rnd: int) -> None:
    clean = _arrays()
    bad = corrupt(clean, mode, rnd)
    ref = {k: v.astype(np.float32) for k, v in clean.items()}
    kept, why = check_update(bad, ref, max_norm=50.0)
    assert kept is None
    expected = {"nan": "NaN", "inf": "NaN or Inf", "huge": "above the bound"}
    eff = ("nan", "inf", "huge")[rnd - 1] if mode == "cycle" else mode
    assert expected[eff] in why
    # the honest update passes
    assert check_update(clean, ref, max_norm=50.0)[0] is not None


def test_huge_update_is_finite_but_far() -> None:
    bad = corrupt(_arrays(), "huge", 1)
    assert all(np.isfinite(v).all() for v in bad.values())
    assert bad["b"][0] == pytest.approx(HUGE)
    with pytest.raises(ValueError, match="poison mode"):
        corrupt(_arrays(), "zeros", 1)


def test_poison_reply_replaces_arrays_and_keeps_metrics() -> None:
    from fedfixtures import task_identity

    task_identity()
    msg = Message(
        RecordDict({"arrays": record_of(_arrays()), "config": ConfigRecord({"server-round": 2})}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    reply = Message(
        RecordDict({"arrays": record_of(_arrays()), "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg
    )
    out = poison_reply(reply, "cycle", 2)  # round 2: Inf
    up = upload_of(out)
    assert np.isinf(up["a.weight"]).any() and not np.isnan(up["a.weight"]).any()
    assert out.content.metric_records["metrics"]["num-examples"] == 5


def test_mia_pairs_members_nonmembers_and_knowledge() -> None:
    from shared.splits import Split
    from simulations.audit_privacy import mia_pairs

    split = Split(
        users=np.array([1, 2]),
        train=[np.array([0, 1, 2, 3]), np.array([4, 5, 6])],
        train_ts=[np.arange(4), np.arange(3)],
        val=np.array([7, 8]),
        test=np.array([9, 10]),
        val_negatives=np.zeros((2, 99), np.int64),
        test_negatives=np.zeros((2, 99), np.int64),
        num_items=30,
    )
    rng = np.random.default_rng(0)
    items, labels, known = mia_pairs(split, np.array([0, 1]), 3, rng, known="history", history_len=5)
    assert labels.sum() == 6 and len(labels) == 12
    for item, label, row in zip(items, labels, known, strict=True):
        u = 0 if (row[row >= 0] < 4).all() else 1
        seen = set(split.train[u].tolist()) | {int(split.val[u]), int(split.test[u])}
        assert (item in seen) == bool(label)
        assert item not in row  # the candidate is never part of what the attacker knows
    items, labels, known = mia_pairs(split, np.array([0]), 2, rng, known="recent", history_len=5)
    assert known.tolist() == [[7, 9]] * 4
    with pytest.raises(ValueError, match="known"):
        mia_pairs(split, np.array([0]), 2, rng, known="all", history_len=5)
