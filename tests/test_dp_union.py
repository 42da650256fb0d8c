"""The in-process DP union simulation does the devices' and the server's arithmetic."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from client.config import LocalConfig
from client.data import NodeData
from client.privacy import NodePrivacy
from client.train import train_dp
from shared.backbone import PrefixCache
from shared.config import ModelConfig, TrainConfig
from shared.model import Recommender
from shared.privacy import PrivacyConfig
from shared.splits import Split
from simulations.dp_union import UnionRun, run_union

MCFG = ModelConfig(
    adapter="bottleneck",
    dim=8,
    bottleneck=4,
    history_len=5,
    user_mode="personal",
    dropout=0.0,
    item_bias=True,
    score="cosine",
    train_personal=False,
)
TCFG = TrainConfig(negatives=5)


def _split(lengths: tuple[int, ...], num_items: int = 40) -> Split:
    rng = np.random.default_rng(0)
    u = len(lengths)
    return Split(
        users=np.arange(u),
        train=[rng.choice(np.arange(3, num_items), size=n, replace=False) for n in lengths],
        train_ts=[np.arange(n) for n in lengths],
        val=np.full(u, 1),
        test=np.full(u, 2),
        val_negatives=np.tile(np.arange(3, 40), (u, 1)),
        test_negatives=np.tile(np.arange(3, 40), (u, 1)),
        num_items=num_items,
    )


def test_one_union_round_equals_fedavg_over_one_step_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    # the same negatives everywhere, so that the only randomness left is the (vanishing) noise
    monkeypatch.setattr(
        "shared.training.sample_negatives", lambda rng, shape, n, pool=None: np.tile(np.arange(shape[1]), (shape[0], 1))
    )
    torch.manual_seed(0)
    cache = PrefixCache(0, pooled=torch.randn(40, 12))
    split = _split((9, 7, 11))
    pcfg = PrivacyConfig(enabled=True, sample_rate=1.0, local_steps=1, expected_batch=4.0, noise_multiplier=1e-9)
    torch.manual_seed(1)
    glob = Recommender(MCFG, cache, 3)
    start = {k: v.clone() for k, v in glob.shared_state().items()}
    # the devices: one DP step each from the global model, plain mean of the uploads (uniform FedAvg)
    mean = {k: torch.zeros_like(v) for k, v in start.items()}
    for u in range(3):
        one = replace(
            split,
            users=split.users[u : u + 1],
            train=[split.train[u]],
            train_ts=[split.train_ts[u]],
            val=split.val[u : u + 1],
            test=split.test[u : u + 1],
            val_negatives=split.val_negatives[u : u + 1],
            test_negatives=split.test_negatives[u : u + 1],
        )
        dev = Recommender(MCFG, cache, 1)
        dev.load_partial(start)
        train_dp(
            dev,
            NodeData(one, cache, None),
            NodePrivacy(1e-9),
            lcfg=LocalConfig(lr=0.5, optimizer="sgd"),
            tcfg=TCFG,
            pcfg=pcfg,
            test_seed=u,
        )
        for k, v in dev.shared_state().items():
            mean[k] += v / 3
    rows = run_union(glob, split, UnionRun(pcfg=pcfg, tcfg=TCFG, rounds=1, lr=0.5, momentum=0.0, eval_every=1))
    for k, v in glob.shared_state().items():
        torch.testing.assert_close(v, mean[k], atol=1e-5, rtol=1e-4, msg=k)
    assert rows[-1]["eval"] == "experimenter" and rows[-1]["round"] == 1


def test_the_union_run_keeps_every_device_within_its_budget() -> None:
    torch.manual_seed(0)
    cache = PrefixCache(0, pooled=torch.randn(40, 12))
    split = _split((9, 7, 11, 8))
    pcfg = PrivacyConfig(enabled=True, target_epsilon=2.0, sample_rate=0.2, local_steps=1, expected_batch=2.0)
    model = Recommender(MCFG, cache, 4)
    rows = run_union(model, split, UnionRun(pcfg=pcfg, tcfg=TCFG, rounds=6, lr=0.1, eval_every=3))
    assert 0 < max(r["epsilon"] for r in rows) <= 2.0
    assert {r["round"] for r in rows} == {0, 3, 6}
    assert all(np.isfinite(r["val-hr@10"]) for r in rows)
