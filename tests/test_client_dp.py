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
from client.train import build_model, train_dp
from shared.backbone import PrefixCache
from shared.config import ModelConfig, TrainConfig
from shared.errors import ConfigError
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


def _dp(**kw: object) -> PrivacyConfig:
    return PrivacyConfig(enabled=True, **{"sample_rate": 0.25, "expected_batch": 4.0, **kw})  # type: ignore[arg-type]


def test_adapter_weights_change_under_dp() -> None:
    data = _tiny_node(lengths=(30,))
    model = Recommender(MCFG, data.cache, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    privacy = NodePrivacy(noise_multiplier=1.0)
    res = train_dp(model, data, privacy, lcfg=LocalConfig(lr=0.05), tcfg=TCFG, pcfg=_dp(local_steps=8))
    after = model.state_dict()
    for name in ("items.adapter.down.weight", "items.adapter.up.weight", "items.proj.weight", "user.personal.weight"):
        assert not torch.equal(before[name], after[name]), f"{name} did not change under DP-SGD"
    assert res.steps == 8 and res.epsilon > 0
    assert privacy.history == [(1.0, 0.25, 8, 1)]


def test_adapter_weights_learn_under_dp_not_only_from_noise() -> None:
    """Opacus issue #820: under DP the adapter must move with the data, not only by the noise."""
    data = _tiny_node(lengths=(30,))
    torch.manual_seed(0)
    model = Recommender(MCFG, data.cache, 1)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    noiseless = NodePrivacy(noise_multiplier=1e-9)  # the clipped signal alone
    train_dp(model, data, noiseless, lcfg=LocalConfig(lr=0.05), tcfg=TCFG, pcfg=_dp(local_steps=8), test_seed=1)
    moved = {k: float((model.state_dict()[k] - base[k]).abs().max()) for k in base}
    assert moved["items.adapter.up.weight"] > 1e-4 and moved["items.proj.weight"] > 1e-4


def test_dp_noise_cannot_be_replayed() -> None:
    """Two DP rounds on identical inputs upload different parameters; only an explicit test seed repeats."""
    data = _tiny_node(lengths=(30,))

    def one(seed: int | None) -> torch.Tensor:
        torch.manual_seed(0)
        model = Recommender(MCFG, data.cache, 1)
        train_dp(
            model, data, NodePrivacy(5.0), lcfg=LocalConfig(lr=0.05), tcfg=TCFG, pcfg=_dp(local_steps=4), test_seed=seed
        )
        return model.items.proj.weight.detach().clone()

    a, b = one(None), one(None)
    assert float((a - b).abs().max()) > 1e-3
    torch.testing.assert_close(one(7), one(7))  # the test-only seed is the one way to repeat a round


def test_clipping_bounds_each_samples_influence_by_group() -> None:
    from client.train import _clipped_sum, _groups

    data = _tiny_node(lengths=(12,))
    model = Recommender(replace(MCFG, item_bias=True), data.cache, 1)
    model.scale.requires_grad_(False)
    pcfg = _dp(max_grad_norm=0.5, personal_grad_norm=0.3, bias_grad_norm=0.2)
    groups = _groups(model, pcfg)
    assert set(groups) == {"shared", "personal", "bias"}
    for ps in groups.values():
        for p in ps:
            p.grad_sample = torch.randn(3, *p.shape) * 10  # type: ignore[attr-defined]
    single = {id(p): p.grad_sample[:1].clone() for ps in groups.values() for p in ps}  # type: ignore[attr-defined]
    _clipped_sum(groups, pcfg.clip_norms())
    total = {id(p): p.grad.clone() for ps in groups.values() for p in ps}  # type: ignore[union-attr]
    for ps in groups.values():
        for p in ps:
            p.grad_sample = single[id(p)]  # type: ignore[attr-defined]
    _clipped_sum(groups, pcfg.clip_norms())
    for g, ps in groups.items():
        norm = torch.sqrt(sum((p.grad**2).sum() for p in ps))  # type: ignore[operator]
        assert float(norm) <= pcfg.clip_norms()[g] + 1e-5
    assert pcfg.total_clip() == pytest.approx((0.25 + 0.09 + 0.04) ** 0.5)
    assert all(torch.isfinite(t).all() for t in total.values())


def test_empty_poisson_batch_is_a_noise_only_step() -> None:
    data = _tiny_node(lengths=(3,))
    model = Recommender(MCFG, data.cache, 1)
    privacy = NodePrivacy(noise_multiplier=1.0)
    # 3 examples at rate 0.2: an empty batch has probability 0.512 per step
    res = train_dp(model, data, privacy, lcfg=LocalConfig(), tcfg=TCFG, pcfg=_dp(sample_rate=0.2), test_seed=3)
    assert res.steps == 5 and np.isfinite(res.loss) and res.epsilon > 0
    assert privacy.history == [(1.0, 0.2, 5, 1)]
    for p in model.parameters():
        assert torch.isfinite(p).all()


def test_a_device_trains_on_at_most_a_tenth_of_one_over_delta() -> None:
    from client.train import dp_samples

    data = _tiny_node(lengths=(30, 25))
    assert len(dp_samples(data.split, _dp(delta=1 / 400))) == 40  # at most 40 interactions
    assert len(dp_samples(data.split, _dp(delta=1e-5))) == 55


def test_noise_is_planned_from_public_settings_only() -> None:
    cfg = PrivacyConfig(enabled=True, target_epsilon=4.0, sample_rate=0.1)
    s1 = plan_noise(cfg, num_rounds=10, fraction=1.0)
    s2 = plan_noise(cfg, num_rounds=40, fraction=1.0)
    assert 0 < s1 < s2
    assert planned_participations(40, 1.0) == 40 and 10 < planned_participations(40, 0.25) < 40
    # the plan holds: those many steps at that noise spend about the target
    assert NodePrivacy(s2, [(s2, 0.1, 40 * 10, 1)]).epsilon(1e-5) == pytest.approx(4.0, rel=0.02)


def test_dp_refuses_bert_top_layers_by_name() -> None:
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="model.top-layers"):
        parse_run_config({"dp.enabled": True, "model.top-layers": 1})
    assert parse_run_config({"model.top-layers": 1, "model.item-bias": False}).core.model.top_layers == 1


def test_dp_run_config_switches_to_the_personal_user_mode(fed_config: dict) -> None:  # noqa: F811
    rc = parse_run_config({**fed_config, "dp.enabled": True})
    assert rc.model.user_mode == "personal"
    assert parse_run_config(fed_config).model.user_mode == "history"
    data = load_node_data(parse_node_config({"partition-id": 0, "num-partitions": 4}), rc.core)
    assert build_model(rc.model, data).cfg.user_mode == "personal"
    assert rc.dp.dp_model(rc.core.model) == rc.model and rc.model.item_bias and not rc.model.train_tower


def test_distributed_shares_carry_their_part_of_the_noise() -> None:
    from client.train import dp_share

    data = _tiny_node(lengths=(12,))
    model = Recommender(MCFG, data.cache, 1)
    pcfg = _dp(mode="distributed", sample_rate=1e-9, min_shares=4, max_grad_norm=1.0)  # no sample: noise only
    p0 = model.user.personal.weight.detach().clone()
    share = dp_share(model, data, NodePrivacy(2.0), tcfg=TCFG, pcfg=pcfg, personal_lr=1.0, test_seed=5)
    assert "user.personal.weight" not in share  # personal coordinates never leave the device
    noise = np.concatenate([v.ravel() for v in share.values()])
    assert noise.std() == pytest.approx(2.0 / np.sqrt(4), rel=0.1)  # σ·C / sqrt(min-shares)
    step = (model.user.personal.weight.detach() - p0).numpy().ravel() * pcfg.expected_batch
    assert step.std() == pytest.approx(2.0, rel=0.3)  # the whole noise on the device's own coordinates
    # with every sample and (almost) no noise a share is the clipped gradient sum: at most n·C
    clean = dp_share(
        model, data, NodePrivacy(1e-9), tcfg=TCFG, pcfg=_dp(mode="distributed", sample_rate=1.0), personal_lr=0.0
    )
    norm = float(np.sqrt(sum(float((v**2).sum()) for v in clean.values())))
    assert 0 < norm <= 12 * 1.0 + 1e-4


def test_distributed_dp_needs_secure_aggregation() -> None:
    from shared.errors import ConfigError

    base = {"dp.enabled": True, "dp.mode": "distributed", "model.item-bias": False}
    with pytest.raises(ConfigError, match="dp.mode"):
        parse_run_config(base)
    assert parse_run_config({**base, "fed.secagg": True}).dp.mode == "distributed"


def test_session_samples_change_by_one_when_one_interaction_changes() -> None:
    from shared.training import sessions

    items = [np.array([5, 6, 7, 8, 9])]
    ts = [np.array([0, 10, 70, 75, 200])]  # 60 s buckets: {5, 6} {7, 8} {9}
    rows, owner = sessions(items, ts, seconds=60, cap=4)
    assert rows.tolist() == [[5, 6, -1, -1], [7, 8, -1, -1], [9, -1, -1, -1]] and owner.tolist() == [0, 0, 0]
    # removing one interaction changes exactly one session (buckets are fixed in time, not by the data)
    fewer, _ = sessions([np.array([5, 6, 8, 9])], [np.array([0, 10, 75, 200])], seconds=60, cap=4)
    assert sum(a != b for a, b in zip(map(tuple, rows), map(tuple, fewer), strict=True)) == 1


def test_session_accounting_is_the_group_of_two_bound() -> None:
    from shared.privacy import epsilon_of

    one = epsilon_of([(1.0, 0.1, 50, 1)], 1e-5)
    two = epsilon_of([(1.0, 0.1, 50, 2)], 1e-5)
    assert one < two < 4 * one + 12  # a group of two costs more than one sample, and stays finite
    cfg = PrivacyConfig(enabled=True, target_epsilon=8.0, sample="session", sample_rate=0.1, local_steps=1)
    sigma = plan_noise(cfg, num_rounds=50, fraction=1.0)
    assert epsilon_of([(sigma, 0.1, 50, 2)], cfg.delta) <= 8.0 < epsilon_of([(sigma * 0.9, 0.1, 50, 2)], cfg.delta)


def test_session_losses_give_exact_per_session_gradients() -> None:
    from shared.training import session_losses

    data = _tiny_node(lengths=(12,))
    model = Recommender(replace(MCFG, item_bias=True, train_personal=False), data.cache, 1)
    model.scale.requires_grad_(False)
    rows = torch.tensor([[3, 4, 5, -1], [6, -1, -1, -1], [7, 8, 9, 10]])
    neg = torch.tensor([[11, 12], [13, 14], [15, 16]])
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    session_losses(model, rows, neg, 0.1).sum().backward()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    per_sample = {n: p.grad_sample.clone() for n, p in named.items()}
    gsm._close()
    for i in range(3):
        ref = torch.autograd.grad(
            session_losses(model, rows[i : i + 1], neg[i : i + 1], 0.1).sum(), list(named.values())
        )
        for (n, _), g in zip(named.items(), ref, strict=True):
            torch.testing.assert_close(per_sample[n][i], g, atol=1e-5, rtol=1e-4, msg=n)


def test_cold_items_are_never_a_training_negative_on_a_device() -> None:
    """On the cold-start split a device draws negatives from warm items only, plain and under DP (as central)."""
    import client.train as ct

    data = _tiny_node(lengths=(30, 25))
    cold = np.arange(20, 40)
    data = NodeData(replace(data.split, cold_items=cold), data.cache, None)
    pool = data.split.negative_pool()
    assert pool is not None and set(pool.tolist()) == set(range(20))
    seen: list[np.ndarray] = []
    scores = ct.subset_scores

    def spy(model: Recommender, users: np.ndarray, hist: np.ndarray | None, cand: np.ndarray) -> torch.Tensor:
        seen.append(cand[:, 1:])  # the negatives (column 0 is the sample's own item)
        return scores(model, users, hist, cand)

    model = Recommender(replace(MCFG, user_mode="history"), data.cache, 2)
    lcfg = LocalConfig(epochs=3, batch_size=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ct, "subset_scores", spy)
        ct.train_plain(model, data, lcfg=lcfg, tcfg=TrainConfig(negatives=16), rng=np.random.default_rng(0))
    negs = np.concatenate([s.ravel() for s in seen])
    assert len(negs) > 500 and not np.isin(negs, cold).any()
    # under DP: the per-sample batches and the session samples draw from the same pool
    for sample in ("interaction", "session"):
        samples = ct.dp_samples(data.split, _dp(sample=sample))
        assert samples.pool is not None and not np.isin(samples.pool, cold).any()
    # without a cold split nothing is excluded
    assert _tiny_node().split.negative_pool() is None


def test_max_steps_caps_a_heavy_node_and_its_weight() -> None:
    """local.max-steps: at most that many steps a round, and num-examples = the samples trained on."""
    import client.train as ct

    data = _tiny_node(num_items=80, lengths=(60, 45))  # 105 samples
    model = Recommender(replace(MCFG, user_mode="history"), data.cache, 2)
    tcfg = TrainConfig(negatives=8)
    full = ct.train_plain(model, data, lcfg=LocalConfig(batch_size=8), tcfg=tcfg, rng=np.random.default_rng(0))
    assert (full.steps, full.num_examples) == (14, 105)
    before = {k: v.clone() for k, v in model.shared_state().items()}
    capped = ct.train_plain(
        model, data, lcfg=LocalConfig(batch_size=8, max_steps=3), tcfg=tcfg, rng=np.random.default_rng(1)
    )
    assert (capped.steps, capped.num_examples) == (3, 24)
    assert any(not torch.equal(before[k], v) for k, v in model.shared_state().items())
    # across epochs a sample counts once
    two = ct.train_plain(
        model, data, lcfg=LocalConfig(batch_size=64, epochs=3, max_steps=4), tcfg=tcfg, rng=np.random.default_rng(2)
    )
    assert two.steps == 4 and two.num_examples == 105
    with pytest.raises(ConfigError, match="local.max-steps"):
        LocalConfig(max_steps=-1)
    # a DP device takes dp.local-steps: the cap is refused there, not silently ignored
    with pytest.raises(ConfigError, match="local.max-steps.*dp.enabled"):
        parse_run_config({"dp.enabled": True, "local.max-steps": 8})
    assert parse_run_config({"local.max-steps": 8, "model.item-bias": False}).local.max_steps == 8
