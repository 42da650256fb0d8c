"""User-level DP at the server: per-node accounting without amplification, noise calibrated for the cohort
Flower really samples, and rounds with fewer clean replies than that skipped (hand-built Messages); and the
record-level ε the server logs from public settings, equal to the devices' own accountants'."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fedfixtures import fed_config, task_identity  # noqa: F401
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from server.config import FedConfig
from server.loop import record_dp_epsilon, user_dp_epsilon
from server.strategy import GuardedStrategy, build_strategy, cohort_size
from shared.privacy import PrivacyConfig, epsilon_of, plan_noise, round_entry

D = 20_000  # parameters: enough to measure the noise's standard deviation to about 1%
REF = {"w": np.zeros(D, np.float32)}


@pytest.fixture(autouse=True)
def _identity() -> None:
    task_identity()


class _Grid:
    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.ids


def _strategy(*, noise: float, clip: float = 1.0, fraction: float = 0.5, nodes: int = 6) -> GuardedStrategy:
    cfg = FedConfig(user_dp="fixed", user_dp_noise=noise, user_dp_clip=clip, fraction_train=fraction, min_nodes=2)
    return build_strategy(cfg, record_dp=False, num_nodes_hint=nodes)


def _configure(strat: GuardedStrategy, grid: _Grid, rnd: int = 1) -> list[Message]:
    return list(strat.configure_train(rnd, ArrayRecord(array_dict={"w": Array(REF["w"])}), ConfigRecord(), grid))


def _answer(ins: Message, w: np.ndarray, **metrics: float) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={"w": Array(w.astype(np.float16))}),
            "metrics": MetricRecord({"unit-weight": 1, **metrics}),
        }
    )
    return Message(content, reply_to=ins)


def _update(norm: float, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(D)
    return (norm * v / np.linalg.norm(v)).astype(np.float32)


# --- accounting ---------------------------------------------------------------------------------------


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε of a mu-GDP mechanism (Gaussian, sensitivity / std = mu) at δ: the tight conversion (Balle & Wang 2018)."""

    def phi(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    def delta_of(eps: float) -> float:
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def test_user_level_epsilon_is_the_unamplified_gaussian_over_a_nodes_rounds() -> None:
    eps = [user_dp_epsilon(noise_multiplier=1.0, participations=k, delta=1e-3) for k in (1, 4, 16)]
    assert user_dp_epsilon(noise_multiplier=1.0, participations=0, delta=1e-3) == 0.0
    assert 0 < eps[0] < eps[1] < eps[2]
    # k rounds at multiplier z compose to one Gaussian at z / sqrt(k) (RDP adds up exactly)
    one = user_dp_epsilon(noise_multiplier=0.5, participations=1, delta=1e-3)
    assert eps[1] == pytest.approx(one, rel=1e-6)
    # an upper bound on the tight ε of the same Gaussian (mu = sqrt(k) / z), and not a loose one
    for k, e in zip((1, 4, 16), eps, strict=True):
        exact = _exact_gaussian_epsilon(math.sqrt(k), 1e-3)
        assert exact <= e <= 1.3 * exact
    assert user_dp_epsilon(noise_multiplier=0.0, participations=1, delta=1e-3) == math.inf
    with pytest.raises(ValueError, match="delta"):
        user_dp_epsilon(noise_multiplier=1.0, participations=1, delta=0.0)


def test_the_server_counts_each_nodes_rounds_from_the_cohorts_it_sent() -> None:
    strat, grid = _strategy(noise=1.0), _Grid(6)
    cohorts = [{m.metadata.dst_node_id for m in _configure(strat, grid, rnd)} for rnd in range(1, 21)]
    assert all(len(c) == 3 for c in cohorts)  # int(6 * 0.5), without replacement
    counts = {n: sum(n in c for c in cohorts) for n in grid.ids}
    assert dict(strat.participation) == {n: k for n, k in counts.items() if k}
    assert strat.max_participation == max(counts.values()) >= 10  # 60 places over 6 nodes


# --- calibration --------------------------------------------------------------------------------------


def test_cohort_size_is_what_flower_samples() -> None:
    assert cohort_size(943, fraction=0.05, min_nodes=2) == 47
    assert cohort_size(10, fraction=0.05, min_nodes=2) == 2
    for n, f, lo in ((6, 0.5, 2), (7, 0.3, 3), (943, 0.05, 2)):
        strat = build_strategy(
            FedConfig(user_dp="fixed", fraction_train=f, min_nodes=lo), record_dp=False, num_nodes_hint=n
        )
        assert strat.dp is not None
        assert (
            strat.dp.num_sampled_clients == cohort_size(n, fraction=f, min_nodes=lo) == len(_configure(strat, _Grid(n)))
        )


def test_noise_is_recalibrated_when_more_nodes_have_connected() -> None:
    strat = _strategy(noise=1.0, nodes=4)
    assert strat.dp is not None and strat.dp.num_sampled_clients == 2
    assert len(_configure(strat, _Grid(8))) == 4 and strat.dp.num_sampled_clients == 4


def test_updates_are_clipped_averaged_uniformly_and_noised_for_the_sampled_cohort() -> None:
    clip, z = 1.0, 2.0
    ups = [_update(0.5, 1), _update(3.0, 2), _update(100.0, 3)]  # the last is above fed.max-update-norm
    # without noise: the mean of the clipped updates
    strat = _strategy(noise=0.0, clip=clip)
    ins = _configure(strat, _Grid(6))
    agg, metrics = strat.aggregate_train(
        1, [_answer(m, u, **{"train-loss": 0.3}) for m, u in zip(ins, ups, strict=True)]
    )
    assert agg is not None and metrics is not None and not strat.report.dropped
    clipped = [u * min(1.0, clip / np.linalg.norm(u)) for u in ups]
    np.testing.assert_allclose(agg["w"].numpy(), np.mean(clipped, axis=0), atol=2e-3)  # float16 uploads
    assert dict(metrics) == {"nodes": 3.0}  # nothing un-noised (the loss) reaches the log
    # with noise: std z * C / m on the mean, m = the 3 nodes sampled
    strat = _strategy(noise=z, clip=clip)
    ins = _configure(strat, _Grid(6))
    agg, _ = strat.aggregate_train(1, [_answer(m, u) for m, u in zip(ins, ups, strict=True)])
    assert agg is not None
    noise = agg["w"].numpy() - np.mean(clipped, axis=0)
    assert np.std(noise) == pytest.approx(z * clip / 3, rel=0.03)


# --- skipped rounds -----------------------------------------------------------------------------------


def _spy(strat: GuardedStrategy) -> list[int]:
    """Record the rounds the DP wrapper is asked to aggregate."""
    assert strat.dp is not None
    calls: list[int] = []
    wrapped = strat.dp.aggregate_train

    def aggregate_train(server_round: int, replies):  # type: ignore[no-untyped-def]
        calls.append(server_round)
        return wrapped(server_round, replies)

    strat.dp.aggregate_train = aggregate_train  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("fault", ["error", "nan", "missing", "stranger"])
def test_a_round_with_fewer_clean_replies_than_calibrated_is_skipped(fault: str) -> None:
    strat = _strategy(noise=1.0)
    calls = _spy(strat)
    ins = _configure(strat, _Grid(6))
    replies = [_answer(m, _update(0.5, i)) for i, m in enumerate(ins[:2])]
    if fault == "error":
        replies.append(Message(Error(code=0, reason="out of budget"), reply_to=ins[2]))
    elif fault == "nan":
        replies.append(_answer(ins[2], np.full(D, np.nan, np.float32)))
    elif fault == "stranger":  # a node outside the cohort does not make up the count
        outsider = next(n for n in range(1, 7) if n not in strat.cohort)
        stray = _answer(ins[2], _update(0.5, 9))
        stray.metadata.__dict__["_src_node_id"] = outsider
        replies.append(stray)
    agg, metrics = strat.aggregate_train(1, replies)
    assert agg is None and metrics is None and calls == []
    rep = strat.report
    assert rep.kept_previous and "2 clean replies" in rep.skipped and "calibrated for 3" in rep.skipped
    assert rep.cohort == 3 and len(rep.errors) + len(rep.dropped) == (0 if fault == "missing" else 1)
    # the node was sampled: the round counts towards its ε all the same
    assert sum(strat.participation.values()) == 3
    # the next round with every reply clean goes through the wrapper
    ins = _configure(strat, _Grid(6), 2)
    agg, _ = strat.aggregate_train(2, [_answer(m, _update(0.5, i)) for i, m in enumerate(ins)])
    assert agg is not None and calls == [2] and not strat.report.skipped


def test_without_user_level_dp_a_short_round_is_still_aggregated() -> None:
    strat = build_strategy(FedConfig(fraction_train=0.5, min_nodes=2), record_dp=True, num_nodes_hint=6)
    ins = _configure(strat, _Grid(6))
    agg, _ = strat.aggregate_train(1, [_answer(ins[0], _update(0.5, 0))])
    assert agg is not None and not strat.report.skipped


# --- the round loop -----------------------------------------------------------------------------------


class _AnsweringGrid(_Grid):
    """Answers training instructions with the global arrays nudged; node ``fail_node`` errs in ``fail_round``."""

    def __init__(self, n: int, *, fail_round: int) -> None:
        super().__init__(n)
        self.fail_round = fail_round
        self.kinds: list[str] = []

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        out = []
        for ins in messages:
            self.kinds.append(ins.metadata.message_type)
            rnd = int(ins.content["config"]["server-round"])
            if rnd == self.fail_round and ins is messages[0]:
                out.append(Message(Error(code=0, reason="node stopped"), reply_to=ins))
                continue
            arrays = {k: Array((v.numpy() + 0.01).astype(np.float16)) for k, v in ins.content["arrays"].items()}
            body = RecordDict({"arrays": ArrayRecord(array_dict=arrays), "metrics": MetricRecord({"unit-weight": 1})})
            out.append(Message(body, reply_to=ins))
        return out


def test_the_loop_skips_short_rounds_accounts_per_node_and_evaluates_only_centrally(
    fed_config: dict,  # noqa: F811
) -> None:
    import json
    from pathlib import Path

    from server.config import parse_server_config
    from server.loop import run_federated

    cfg = {
        **fed_config,
        "dp.enabled": True,
        "fed.user-dp": "fixed",
        "fed.strategy": "fedavg",
        "fed.fraction-train": 0.5,
        "fed.min-nodes": 2,
        "num-server-rounds": 3,
        "fed.run-name": "udp",
    }
    rc = parse_server_config(cfg)
    grid = _AnsweringGrid(4, fail_round=2)
    rows = run_federated(grid, rc)  # type: ignore[arg-type]
    assert set(grid.kinds) == {"train"}  # no federated evaluation was sent
    assert [r.get("skipped", "") != "" for r in rows] == [False, True, False]
    assert rows[1]["failed"] == 1 and set(rows[1]["train"]) <= {"upload-bytes-per-client"}
    sigma = plan_noise(rc.dp, num_rounds=3, fraction=0.5)
    for r in rows:
        assert r["eval"] == "experimenter" and "fed" not in r and 0 <= r["central"]["val-hr@10"] <= 1
        k = r["user-dp-max-participation"]
        assert r["user-dp-epsilon"] == user_dp_epsilon(noise_multiplier=1.0, participations=k, delta=1e-3)
        # record level, from public settings (no reply carried ε): the same per-node count
        assert r["max-participation"] == k and r["delta"] == rc.dp.delta and r["noise-multiplier"] == sigma
        assert r["epsilon"] == record_dp_epsilon(rc.dp, noise_multiplier=sigma, participations=k) > 0
    assert [r["user-dp-max-participation"] for r in rows][-1] >= 2  # 6 places over 4 nodes
    summary = json.loads((Path(cfg["fed.out-dir"]) / "udp" / "summary.json").read_text())
    assert summary["best-selected-by"].startswith("experimenter") and summary["best"]["round"] in (1, 2, 3)
    # a resumed run cannot match node ids across the restart: earlier rounds add to every node's count
    grid = _AnsweringGrid(4, fail_round=0)
    more = run_federated(grid, parse_server_config({**cfg, "num-server-rounds": 4}))  # type: ignore[arg-type]
    assert more[-1]["round"] == 4
    assert more[-1]["user-dp-max-participation"] == rows[-1]["user-dp-max-participation"] + 1
    assert more[-1]["max-participation"] == more[-1]["user-dp-max-participation"]


# --- record-level ε from public settings ------------------------------------------------------------------


def test_the_servers_record_level_epsilon_is_the_devices_accountants() -> None:
    cfg = PrivacyConfig(enabled=True, noise_multiplier=1.1, sample_rate=0.02, local_steps=7, delta=1e-5)
    assert record_dp_epsilon(cfg, noise_multiplier=1.1, participations=0) == 0.0
    eps = [record_dp_epsilon(cfg, noise_multiplier=1.1, participations=r) for r in (1, 5, 20)]
    assert 0 < eps[0] < eps[1] < eps[2]
    for r, e in zip((1, 5, 20), eps, strict=True):  # a device appends one round's entry per round it trains
        assert e == pytest.approx(epsilon_of([round_entry(cfg, 1.1)] * r, cfg.delta), rel=1e-9)
    dist = PrivacyConfig(enabled=True, mode="distributed", noise_multiplier=1.1, sample_rate=0.02)
    assert record_dp_epsilon(dist, noise_multiplier=1.1, participations=3) == pytest.approx(
        epsilon_of([(1.1, 0.02, 1, 1)] * 3, dist.delta), rel=1e-9
    )  # one step per round
    with pytest.raises(ValueError, match="participations"):
        record_dp_epsilon(cfg, noise_multiplier=1.1, participations=-1)


def test_the_loop_logs_the_planned_noise_and_the_most_sampled_nodes_epsilon(fed_config: dict) -> None:  # noqa: F811
    import json
    from pathlib import Path

    from server.config import parse_server_config
    from server.loop import run_federated

    cfg = {
        **fed_config,
        "dp.enabled": True,
        "dp.target-epsilon": 4.0,
        "dp.local-steps": 3,
        "fed.fraction-train": 0.5,
        "fed.min-nodes": 2,
        "num-server-rounds": 2,
        "fed.run-name": "rdp",
    }
    rc = parse_server_config(cfg)
    grid = _AnsweringGrid(4, fail_round=0)
    rows = run_federated(grid, rc)  # type: ignore[arg-type]
    sigma = plan_noise(rc.dp, num_rounds=2, fraction=0.5)
    assert sigma > 0 and sigma != rc.dp.noise_multiplier  # planned for the target, as each device plans it
    for r in rows:
        # the replies carried only the unit weight; the server measured their size itself
        assert r["train"]["nodes"] == 2.0 and set(r["train"]) == {"nodes", "upload-bytes-per-client"}
        assert r["noise-multiplier"] == sigma and r["delta"] == 1e-5
        assert r["epsilon"] == record_dp_epsilon(rc.dp, noise_multiplier=sigma, participations=r["max-participation"])
        assert r["epsilon"] <= 4.0 * (1 + 1e-9)
    assert [r["max-participation"] for r in rows][-1] in (1, 2)
    summary = json.loads((Path(cfg["fed.out-dir"]) / "rdp" / "summary.json").read_text())
    assert summary["last"]["epsilon"] == rows[-1]["epsilon"]
    assert summary["best-selected-by"].startswith("experimenter")
