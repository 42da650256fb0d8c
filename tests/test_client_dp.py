"""Client: DP-SGD correctness (per-sample gradients, adapters change, cumulative ε, empty batches)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from fedfixtures import fed_config  # noqa: F401
from opacus import GradSampleModule

from client.config import LocalConfig, PrivacyConfig, parse_node_config, parse_run_config
from client.data import NodeData, load_node_data
from client.privacy import NodePrivacy, plan_noise, planned_participations
from client.train import _noise_only_step, build_model, train_dp
from shared.backbone import PrefixCache
from shared.config import ModelConfig, TrainConfig
from shared.model import Recommender
from shared.splits import Split
from shared.training import Sequences, make_batch, sample_losses


def _tiny_node(num_items: int = 40, lengths: tuple[int, ...] = (12,), width: int = 24) -> NodeData:
    rng = np.random.default_rng(0)
    train = [rng.choice(num_items, size=n, replace=False) for n in lengths]
    u = len(lengths)
    split = Split(
        users=np.arange(u),
        train=train,
        train_ts=[np.arange(n) for n in lengths],
        val=np.full(u, 1),
        test=np.full(u, 2),
        val_negatives=np.tile(np.arange(3, 40), (u, 1))[:, :37],
        test_negatives=np.tile(np.arange(3, 40), (u, 1))[:, :37],
        num_items=num_items,
    )
    torch.manual_seed(0)
    return NodeData(split, PrefixCache(0, pooled=torch.randn(num_items, width)), None)


MCFG = ModelConfig(adapter="bottleneck", dim=8, bottleneck=4, history_len=5, user_mode="personal", dropout=0.0)
TCFG = TrainConfig(negatives=5)


def test_per_sample_gradients_equal_per_example_autograd() -> None:
    data = _tiny_node(lengths=(12, 9))
    model = Recommender(MCFG, data.cache, 2)
    model.scale.requires_grad_(False)  # as under DP (no per-sample rule for a bare parameter)
    seqs = Sequences.from_lists(data.split.train)
    users, steps = seqs.samples()
    idx = np.arange(6)
    b = make_batch(
        seqs, users[idx], steps[idx], history_len=None, negatives=5, num_items=40, rng=np.random.default_rng(1)
    )
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    sample_losses(gsm(b["users"], None, b["candidates"]), "softmax", 0.1).sum().backward()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("items.adapter") for n in named) and "user.personal.weight" in named
    per_sample = {n: p.grad_sample.clone() for n, p in named.items()}
    gsm._close()  # remove the hooks before the reference passes
    for i in range(len(idx)):
        model.zero_grad()
        ref = torch.autograd.grad(
            sample_losses(model(b["users"][i : i + 1], None, b["candidates"][i : i + 1]), "softmax", 0.1).sum(),
            list(named.values()),
            allow_unused=True,
        )
        for (n, p), g in zip(named.items(), ref, strict=True):
            g = torch.zeros_like(p) if g is None else g
            torch.testing.assert_close(per_sample[n][i], g, atol=1e-5, rtol=1e-4, msg=n)


def test_adapter_weights_change_under_dp() -> None:
    data = _tiny_node(lengths=(30,))
    model = Recommender(MCFG, data.cache, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    privacy = NodePrivacy(noise_multiplier=1.0)
    res = train_dp(
        model,
        data,
        privacy,
        lcfg=LocalConfig(batch_size=8, epochs=2),
        tcfg=TCFG,
        pcfg=PrivacyConfig(enabled=True),
        rng=np.random.default_rng(0),
    )
    after = model.state_dict()
    for name in ("items.adapter.down.weight", "items.adapter.up.weight", "items.proj.weight", "user.personal.weight"):
        assert not torch.equal(before[name], after[name]), f"{name} did not change under DP-SGD"
    assert res.steps == 2 * 4 and res.epsilon > 0
    assert sum(h[2] for h in privacy.history) == res.steps


def test_empty_poisson_batch_is_a_noise_only_step() -> None:
    data = _tiny_node(lengths=(3,))
    model = Recommender(MCFG, data.cache, 1)
    privacy = NodePrivacy(noise_multiplier=1.0)
    # 3 examples, batch 1: sample rate 1/3, an empty batch has probability 8/27 per step
    res = train_dp(
        model,
        data,
        privacy,
        lcfg=LocalConfig(batch_size=1, epochs=20),
        tcfg=TCFG,
        pcfg=PrivacyConfig(enabled=True),
        rng=np.random.default_rng(0),
    )
    assert res.steps == 60 and np.isfinite(res.loss) and res.epsilon > 0
    for p in model.parameters():
        assert torch.isfinite(p).all()


def test_noise_only_step_moves_parameters_and_counts() -> None:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    data = _tiny_node()
    model = Recommender(MCFG, data.cache, 1)
    model.scale.requires_grad_(False)
    engine = PrivacyEngine(accountant="rdp")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    gsm, dp_opt, _ = engine.make_private(
        module=model,
        optimizer=opt,
        data_loader=DataLoader(TensorDataset(torch.arange(4)), batch_size=2),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    w = model.items.proj.weight.detach().clone()
    _noise_only_step(dp_opt, [p for p in gsm.parameters() if p.requires_grad])
    assert not torch.equal(w, model.items.proj.weight)
    assert engine.accountant.history == [(1.0, 0.5, 1)]
    gsm._close()


def test_noise_for_target_epsilon_is_planned_from_rounds_and_steps() -> None:
    cfg = PrivacyConfig(enabled=True, target_epsilon=4.0)
    s1 = plan_noise(cfg, num_examples=100, batch_size=32, local_epochs=1, num_rounds=10, fraction=1.0)
    s2 = plan_noise(cfg, num_examples=100, batch_size=32, local_epochs=1, num_rounds=40, fraction=1.0)
    assert 0 < s1 < s2
    assert planned_participations(40, 1.0) == 40 and 10 < planned_participations(40, 0.25) < 40
    # the plan holds: those many steps at that noise spend about the target
    hist = [(s2, 1 / 4, 40 * 4)]
    assert NodePrivacy(s2, hist).epsilon(1e-3) == pytest.approx(4.0, rel=0.02)


def test_dp_run_config_switches_to_the_personal_user_mode(fed_config: dict) -> None:  # noqa: F811
    rc = parse_run_config({**fed_config, "dp.enabled": True})
    assert rc.model.user_mode == "personal"
    assert parse_run_config(fed_config).model.user_mode == "history"
    data = load_node_data(parse_node_config({"partition-id": 0, "num-partitions": 4}), rc.core)
    assert build_model(rc.model, data).cfg.user_mode == "personal"
    assert replace(rc.core.model, user_mode="personal") == rc.model
