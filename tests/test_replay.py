"""The noise-replay attack on a tiny device: it succeeds against the old node-id/round seeding, fails now."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from client.config import LocalConfig, PrivacyConfig
from client.data import NodeData
from client.privacy import NodePrivacy
from client.train import train_dp
from shared.backbone import PrefixCache
from shared.config import ModelConfig, TrainConfig
from shared.model import Recommender
from shared.splits import Split
from simulations.audit_privacy import (
    candidate_seeds,
    old_dp_seed,
    recorded_secure_seeds,
    regenerate_noise,
    replay_attack,
)

MCFG = ModelConfig(
    adapter="bottleneck", dim=8, bottleneck=4, history_len=5, user_mode="personal", dropout=0.0, item_bias=True
)
TCFG = TrainConfig(negatives=5)
PCFG = PrivacyConfig(enabled=True, sample_rate=0.25, expected_batch=4.0, local_steps=1)
LCFG = LocalConfig(lr=0.3, optimizer="sgd")
SIGMA = 1.5
NODE_ID, ROUND = 7_345_617_289_530_114_201, 3


def _device(num_items: int = 40, n: int = 30) -> tuple[Recommender, NodeData]:
    rng = np.random.default_rng(0)
    split = Split(
        users=np.arange(1),
        train=[rng.choice(num_items, size=n, replace=False)],
        train_ts=[np.arange(n)],
        val=np.full(1, 1),
        test=np.full(1, 2),
        val_negatives=np.tile(np.arange(3, 40), (1, 1)),
        test_negatives=np.tile(np.arange(3, 40), (1, 1)),
        num_items=num_items,
    )
    torch.manual_seed(0)
    data = NodeData(split, PrefixCache(0, pooled=torch.randn(num_items, 24)), None)
    return Recommender(MCFG, data.cache, 1), data


def _round(model: Recommender, data: NodeData, sigma: float, seed: int | None) -> dict[str, torch.Tensor]:
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # σ = 0 (the clean rerun): ε = ∞
        train_dp(m, data, NodePrivacy(sigma), lcfg=LCFG, tcfg=TCFG, pcfg=PCFG, test_seed=seed)
    return m.shared_state()


def test_old_seed_is_what_the_server_knows() -> None:
    assert old_dp_seed(5, 2) == 5 * 1_000_003 + 2
    assert old_dp_seed(NODE_ID, ROUND) == (NODE_ID * 1_000_003 + ROUND) % 2**31
    fams = candidate_seeds(NODE_ID, ROUND, partition_id=4, scan=10)
    assert next(iter(fams.values())) == [old_dp_seed(NODE_ID, ROUND)]
    assert fams["round"] == [ROUND] and NODE_ID in fams["node id"] and fams["0..9"] == list(range(10))


def test_regenerated_noise_is_the_noise_train_dp_added() -> None:
    model, data = _device()
    before = {k: v.clone() for k, v in model.shared_state().items()}
    noisy, clean = _round(model, data, SIGMA, 123), _round(model, data, 0.0, 123)
    z = regenerate_noise(model, PCFG, num_samples=30, noise_multiplier=SIGMA, seed=123)
    coef = LCFG.lr / PCFG.expected_batch
    assert {"items.bias.weight", "user.personal.weight"} <= set(z)
    for k in before:
        expected = -coef * z[k] if k in z else torch.zeros_like(before[k])
        torch.testing.assert_close(noisy[k] - clean[k], expected, atol=1e-6, rtol=1e-5, msg=k)
    # and it is nothing like another seed's noise
    other = regenerate_noise(model, PCFG, num_samples=30, noise_multiplier=SIGMA, seed=124)
    assert (other["items.bias.weight"] - z["items.bias.weight"]).abs().max() > SIGMA


def test_recorded_seed_reproduces_a_secure_round() -> None:
    model, data = _device()
    with recorded_secure_seeds() as drawn:
        up = _round(model, data, SIGMA, None)
        up2 = _round(model, data, SIGMA, None)
    assert len(drawn) == 2 and drawn[0] != drawn[1]
    assert any(not torch.equal(up[k], up2[k]) for k in up)  # fresh OS entropy each round
    again = _round(model, data, SIGMA, drawn[0])
    assert all(torch.equal(up[k], again[k]) for k in up)
    import client.train

    assert client.train.secure_seed.__name__ == "secure_seed"  # the instrument is removed again


def test_replay_succeeds_against_old_seeding_and_fails_now() -> None:
    model, data = _device()
    r = replay_attack(
        model,
        data,
        pcfg=PCFG,
        lcfg=LCFG,
        tcfg=TCFG,
        noise_multiplier=SIGMA,
        node_id=NODE_ID,
        server_round=ROUND,
        scan=8,
    )
    std = r["noise_std_in_upload"]
    assert std == pytest.approx(LCFG.lr * SIGMA * PCFG.total_clip() / PCFG.expected_batch)
    old, now = r["old_seeding"], r["current"]
    assert old["verdict"] == "succeeds" and now["verdict"] == "fails"
    # old seeding: the server's replay is the upload, bit for bit, and removing its noise leaves the clean update
    assert old["upload_max_abs_diff"] == 0.0
    assert old["best_candidate"]["family"].startswith("old formula")
    assert old["clean_max_abs_diff"] < 1e-5 * std and old["clean_max_abs_diff_wire"] < 0.1 * std
    # now: no derivable seed comes near; what is left after "subtracting" is noise of the upload's own size
    assert now["candidates"] == 1 + 1 + 2 + 1 + 8
    assert now["upload_max_abs_diff"] > 0.5 * std
    assert now["clean_max_abs_diff"] > 1.0 * std and now["best_candidate"]["clean_rel_l2_error"] > 1.0
    assert now["recorded_seed_reproduces_upload_max_abs_diff"] == 0.0


def test_replay_needs_one_sgd_step() -> None:
    model, data = _device()
    for pcfg, lcfg in ((PrivacyConfig(enabled=True, local_steps=2), LCFG), (PCFG, LocalConfig(optimizer="adam"))):
        with pytest.raises(ValueError, match="one local SGD step"):
            replay_attack(
                model, data, pcfg=pcfg, lcfg=lcfg, tcfg=TCFG, noise_multiplier=SIGMA, node_id=1, server_round=1, scan=1
            )
