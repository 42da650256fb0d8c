"""The privacy-audit statistics, the membership-inference attacks and the fault-injection client (fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from client.state import record_of
from server.strategy import check_update
from shared.backbone import PrefixCache
from shared.checkpoint import Checkpoint
from shared.config import ModelConfig
from shared.model import Recommender
from shared.serving import ServingModel
from shared.splits import Split
from simulations.audit_apps import HUGE, corrupt, poison_reply, upload_of
from simulations.audit_privacy import (
    HELDOUT,
    MEMBER,
    NEWEST,
    NONMEMBER,
    MiaSettings,
    advantage,
    auc,
    known_items,
    leak_rankings,
    make_command,
    membership_inference,
    mia_candidates,
    precision_at_k,
    preset_checkpoints,
    random_precision,
    timeline,
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


def _split(users: int = 40, items: int = 200, per_user: int = 12, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    lines = [rng.choice(items, size=per_user + 2, replace=False) for _ in range(users)]
    return Split(
        users=np.arange(users),
        train=[x[:per_user] for x in lines],
        train_ts=[np.arange(per_user) for _ in lines],
        val=np.array([x[per_user] for x in lines]),
        test=np.array([x[per_user + 1] for x in lines]),
        val_negatives=np.zeros((users, 99), np.int64),
        test_negatives=np.zeros((users, 99), np.int64),
        num_items=items,
    )


def test_mia_candidates_members_nonmembers_heldout() -> None:
    split = _split(users=5, items=60)
    items, labels, owner = mia_candidates(split, np.arange(5), 4, np.random.default_rng(0))
    for item, label, u in zip(items, labels, owner, strict=True):
        line = timeline(split, int(u))
        if label == MEMBER:
            assert item in split.train[u]
        elif label == NONMEMBER:
            assert item not in line
        elif label == NEWEST:
            assert item in split.train[u][-2:]
        else:
            assert label == HELDOUT and item in (split.val[u], split.test[u])
    for u in range(5):
        assert [(labels[owner == u] == lab).sum() for lab in (MEMBER, NONMEMBER, HELDOUT, NEWEST)] == [4, 4, 2, 2]


def test_known_items_leave_the_candidate_out_at_equal_length() -> None:
    split = _split(users=2, items=60)
    rng = np.random.default_rng(0)
    line = timeline(split, 0)
    member, held = int(split.train[0][3]), int(split.test[0])
    non = int(np.setdiff1d(np.arange(60), line)[0])
    lengths = set()
    for item, label in ((member, MEMBER), (non, NONMEMBER), (held, HELDOUT)):
        hist = known_items(split, 0, item, label, "history", recent=3, rng=rng)
        assert item not in hist and set(hist) <= set(line.tolist())
        lengths.add(len(hist))
        recent = known_items(split, 0, item, label, "recent", recent=3, rng=rng)
        assert item not in recent and len(recent) == 3
        assert recent.tolist() == [x for x in line.tolist() if x != item][-3:]  # the newest, oldest first
    assert lengths == {len(line) - 1}
    with pytest.raises(ValueError, match="knowledge"):
        known_items(split, 0, member, MEMBER, "all", recent=3, rng=rng)


def _serving(num_items: int, bias: np.ndarray, seed: int = 0) -> ServingModel:
    rng = np.random.default_rng(seed)
    cfg = ModelConfig(dim=8, user_mode="personal", history_len=50, score="cosine")
    vecs = torch.as_tensor(rng.normal(size=(num_items, 8)), dtype=torch.float32)
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    ck = Checkpoint(cfg, {}, vecs, torch.as_tensor(bias, dtype=torch.float32), list(range(num_items)), {})
    return ServingModel(ck)


def test_score_attack_finds_trained_items_and_item_calibration_removes_item_effects() -> None:
    split = _split(items=2000)
    trained = np.unique(np.concatenate(split.train))  # about a fifth of the catalogue
    # a model that memorised its training data at the item level: a raised bias on every trained row
    bias = np.zeros(split.num_items)
    bias[trained] = 2.0
    r = membership_inference(_serving(split.num_items, bias), split, MiaSettings(per_user=6, ref_items=50))
    for k in ("recent", "history"):
        assert r[f"{k}.score.auc"] > 0.75 and r[f"{k}.user_calibrated.auc"] > 0.75
        assert r[f"{k}.score.auc_member_vs_heldout"] > 0.75  # trained on: above the user's held-out items
        assert r[f"{k}.score.auc_heldout"] < 0.65  # the held-out items were not trained on
        assert r[f"{k}.score.auc_newest_vs_heldout"] > 0.75
        # an offset that is the same for every user is what the item-centred attacks remove
        assert r[f"{k}.item_calibrated.auc"] < 0.65 and r[f"{k}.calibrated.auc"] < 0.65
    assert r["users"] == 40 and r["members"] == r["non-members"] == 240 and r["held-out"] == r["newest-trained"] == 80
    # against a reference model without the memorised bias, the difference is the bias itself
    ref = _serving(split.num_items, np.zeros(split.num_items))
    rr = membership_inference(_serving(split.num_items, bias), split, MiaSettings(per_user=6), reference=ref)
    assert rr["history.reference.auc"] > 0.75 and rr["history.reference.auc_heldout"] < 0.65
    # a model is its own reference: nothing added, every pair tied
    same = membership_inference(ref, split, MiaSettings(per_user=6), reference=ref)
    assert same["history.reference.auc"] == same["recent.reference.auc"] == 0.5
    # a model with no per-item signal: every attack at chance
    flat = membership_inference(_serving(split.num_items, np.zeros(split.num_items)), split, MiaSettings(per_user=6))
    assert all(abs(v - 0.5) < 0.15 for k, v in flat.items() if k.endswith(".auc"))


def test_missing_checkpoints_name_the_path_and_the_command(tmp_path: Path) -> None:
    ok = tmp_path / "fed" / "fed-dp-eps8" / "checkpoint"
    ok.mkdir(parents=True)
    (ok / "fedxrec.json").write_text("{}")
    found, missing = preset_checkpoints(("fed", "fed-dp-eps8", "fed-sdp-eps1"), tmp_path)
    assert found == {"fed-dp-eps8": ok}
    assert str(tmp_path / "fed" / "fed" / "checkpoint") in missing["fed"]
    assert "python -m simulations.bench_fed --presets fed" in missing["fed"]
    assert "python -m simulations.bench_dp --presets fed-sdp-eps1" in missing["fed-sdp-eps1"]
    assert make_command("fed-dp-eps1") == "python -m simulations.bench_dp --presets fed-dp-eps1"


def test_replace_in_summary_deletes_and_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import simulations.results
    from simulations.audit import replace_in_summary

    monkeypatch.setattr(simulations.results, "RESULTS", tmp_path)
    (tmp_path / "summary.json").write_text(
        json.dumps({"privacy": {"old": 1, "mia_auc": {"stale": 0.9}, "provenance": {"leak": "L"}}, "runs": {"x": 1}})
    )
    replace_in_summary(
        "privacy", {"old": None, "mia_auc": {"fed": 0.7}, "provenance": {"mia": "M"}}, merge=("provenance",)
    )
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == {"privacy": {"mia_auc": {"fed": 0.7}, "provenance": {"leak": "L", "mia": "M"}}, "runs": {"x": 1}}


def test_audit_cli_on_tiny_preset_checkpoints(tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m simulations.audit --parts mia,leak,replay`` end to end, on tiny data and untrained models."""
    import json

    from fedfixtures import tiny_overrides

    import simulations.report
    import simulations.results
    from client.config import parse_run_config
    from server.config import parse_server_config
    from server.loop import initial_model
    from shared.checkpoint import save_checkpoint
    from shared.pipeline import prepare
    from simulations.audit import main
    from simulations.audit_privacy import checkpoint_dir
    from simulations.presets import PRESETS
    from simulations.runner import run_config

    sets: dict[str, object] = tiny_overrides(tmp_path, tiny_bert)
    committed, ckroot = tmp_path / "results", tmp_path / "ck"
    monkeypatch.setattr(simulations.results, "RESULTS", committed)
    monkeypatch.setattr(simulations.results, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(simulations.report, "RESULTS", committed)
    monkeypatch.setenv("FEDXREC_AUDIT_THREADS", str(torch.get_num_threads()))
    # --set and --checkpoints are ad-hoc settings: the figures go under runs/audit/, never results/
    results = tmp_path / "runs" / "audit"
    results.mkdir(parents=True)
    # the stand-in audit's layout: one flat provenance and its training stats
    stale = {"training": {"fed-A": {}}, "mia_auc": {"fed": 0.54}, "provenance": {"command": "audit.py"}}
    (results / "summary.json").write_text(json.dumps({"privacy": stale, "runs": {"fed": {"hr@10": 0.7}}}))
    for name in ("fed", "fed-dp-eps8"):
        cfg = run_config({**PRESETS[name], **sets})
        crc, src = parse_run_config(cfg), parse_server_config(cfg)
        prep = prepare(crc.core, progress=False)
        save_checkpoint(initial_model(src, prep), prep.dataset.catalogue.ids, checkpoint_dir(name, ckroot))
    argv = ["--parts", "mia,leak,replay", "--checkpoints", str(ckroot), "--leak-users", "2", "--replay-seeds", "3"]
    argv += ["--mia-per-user", "3", *[f"--set={k}={v}" for k, v in sets.items()]]
    assert main(argv) == 0
    assert not committed.exists()
    data = json.loads((results / "summary.json").read_text())
    priv = data["privacy"]
    assert data["runs"] == {"fed": {"hr@10": 0.7}} and "training" not in priv
    assert set(priv["mia_auc"]) == {"fed", "fed-dp-eps8"} and all(0 <= v <= 1 for v in priv["mia_auc"].values())
    assert "bench_dp --presets fed-dp-eps1" in priv["mia_skipped"]["fed-dp-eps1"]
    assert set(priv["mia"]["fed"]) >= {"history.score.auc", "recent.calibrated.auc", "history.score.auc_heldout"}
    # the checkpoints here are the round-0 models: their figures are the public start's
    assert priv["mia_auc_public_start"] == priv["mia_score_auc"]
    assert priv["mia_auc_reference"] == {"fed": 0.5, "fed-dp-eps8": 0.5}
    assert set(priv["upload_leak_p10"]) == {"fed", "fed-dp-eps8"}
    assert priv["upload_leak"]["fed-dp-eps8"]["noise_multiplier"] > 0
    assert priv["replay"] == {"fed-dp-eps8": "fails"}
    ev = priv["replay_evidence"]["fed-dp-eps8"]
    assert ev["old_seeding"]["verdict"] == "succeeds" and ev["old_seeding"]["upload_max_abs_diff"] == 0.0
    assert ev["current"]["clean_max_abs_diff_wire"] > ev["noise_std_in_upload"]
    assert set(priv["provenance"]) == {"mia", "leak", "replay"}
    assert priv["provenance"]["mia"]["settings"]["attack"]["attacker-knows"]["recent"]

    # --presets fed: only fed is audited again; fed-dp-eps8's figures and provenance entry stay
    (checkpoint_dir("fed-dp-eps8", ckroot) / "fedxrec.json").unlink()  # its model gone since
    before = priv
    assert main([*argv[:1], "mia,leak", *argv[2:], "--presets", "fed"]) == 0
    after = json.loads((results / "summary.json").read_text())["privacy"]
    for key in ("mia_auc", "mia", "upload_leak_p10", "upload_leak"):
        assert set(after[key]) == set(before[key])
        assert after[key]["fed-dp-eps8"] == before[key]["fed-dp-eps8"]
    models = after["provenance"]["mia"]["settings"]["models"]
    assert set(models) == {"fed", "fed-dp-eps8"}
    assert models["fed-dp-eps8"]["audited"] == before["provenance"]["mia"]["finished"]
    assert "audited" not in models["fed"]
    assert "fed-dp-eps8" in after["provenance"]["leak"]["settings"]["devices"]
    assert after["replay"] == before["replay"]  # not a part of this run: left alone
