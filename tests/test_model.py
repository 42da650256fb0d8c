from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.backbone import cached_prefix, compute_prefix, extended_mask, load_backbone, mean_pool
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.config import ConfigError, ModelConfig, TrainConfig, config_from_flat
from shared.errors import CheckpointError
from shared.model import Recommender
from shared.serving import ServingModel
from shared.training import Sequences, make_batch, sample_losses

TEXTS = [f"Movie {i}. Genres: Drama. A story about item {i}." for i in range(12)]


def _model(tiny_bert: str, k: int, adapter: str = "lora", **kw: object) -> tuple[Recommender, torch.nn.Module]:
    backbone, tok = load_backbone(tiny_bert)
    cache = compute_prefix(backbone, tok, TEXTS, top_layers=k, max_length=24, progress=False)
    kw = {"top_precision": "fp32", **kw}  # the exactness tests compare fp32 results
    cfg = ModelConfig(backbone=tiny_bert, top_layers=k, adapter=adapter, dim=8, max_length=24, history_len=4, **kw)  # type: ignore[arg-type]
    torch.manual_seed(0)
    return Recommender(cfg, cache, num_users=3, backbone=backbone if k else None), backbone


@pytest.mark.parametrize(("k", "adapter"), [(1, "lora"), (2, "lora"), (1, "bottleneck")])
def test_fresh_adapter_equals_frozen_base(tiny_bert: str, k: int, adapter: str) -> None:
    model, backbone = _model(tiny_bert, k, adapter)
    model.eval()
    _, tok = load_backbone(tiny_bert)
    enc = tok(TEXTS[:5], padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        base = mean_pool(backbone(**enc).last_hidden_state, enc["attention_mask"])
        adapted = model.items.text_features(torch.arange(5))
        # exact: the base top layers on the same cached input
        hidden, mask = model.items.hidden[:5].float(), model.items.mask[:5]
        ext = extended_mask(mask, hidden.dtype)
        for layer in backbone.encoder.layer[-k:]:
            hidden = layer(hidden, attention_mask=ext)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        exact = mean_pool(hidden, mask)
    torch.testing.assert_close(adapted, exact, atol=1e-6, rtol=1e-6)
    # and close to the whole uncached backbone (the cache stores hidden states in float16)
    torch.testing.assert_close(adapted, base, atol=2e-3, rtol=2e-3)


def test_only_adapter_parameters_change_in_a_step(tiny_bert: str) -> None:
    # no dropout and a moderate step: at lr 0.5 the second step's loss saturates (0) or explodes,
    # depending on the dropout draw, and A's change would hang on that
    model, _ = _model(tiny_bert, 1, "lora", dropout=0.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert not any(n.startswith("items.adapter.layer") and "lora_" not in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    cand = torch.tensor([[1, 2, 3], [4, 5, 6]])
    # LoRA B starts at zero, so take two steps: the first moves B, the second moves A too
    for _ in range(2):
        loss = sample_losses(
            model(torch.tensor([0, 1]), torch.tensor([[0, -1, -1, -1], [3, 2, -1, -1]]), cand), "softmax", 0.1
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    frozen = [n for n in before if n.startswith("items.adapter.layer") and "lora_" not in n]
    assert frozen and not set(frozen) & changed


def test_prefix_cache_reused_and_rebuilt_when_texts_change(tiny_bert: str, tmp_path: Path) -> None:
    c1, p1 = cached_prefix(tiny_bert, TEXTS, tmp_path, top_layers=1, max_length=24, progress=False)
    mtime = p1.stat().st_mtime_ns
    c2, p2 = cached_prefix(tiny_bert, TEXTS, tmp_path, top_layers=1, max_length=24, progress=False)
    assert p2 == p1 and p2.stat().st_mtime_ns == mtime
    assert c1.hidden is not None and c2.hidden is not None and torch.equal(c1.hidden, c2.hidden)
    c3, p3 = cached_prefix(
        tiny_bert, [*TEXTS[:-1], "A changed text."], tmp_path, top_layers=1, max_length=24, progress=False
    )
    assert p3 != p1 and c3.hidden is not None and not torch.equal(c3.hidden[-1], c1.hidden[-1])
    assert torch.equal(c3.hidden[0], c1.hidden[0])
    assert len(list((tmp_path / "items").glob("*.tmp"))) == 0


def test_damaged_cache_file_is_a_clear_error(tiny_bert: str, tmp_path: Path) -> None:
    from shared.backbone import load_prefix
    from shared.errors import DataError

    _, path = cached_prefix(tiny_bert, TEXTS, tmp_path, top_layers=0, max_length=24, progress=False)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match="damaged item cache"):
        load_prefix(path)


def test_history_mode_scores_and_personal_mode_ignores_history(tiny_bert: str) -> None:
    model, _ = _model(tiny_bert, 0, user_mode="personal")
    model.eval()
    cand = torch.tensor([[1, 2, 3]])
    a = model(torch.tensor([0]), torch.tensor([[4, 5, -1, -1]]), cand)
    b = model(torch.tensor([0]), torch.tensor([[7, -1, -1, -1]]), cand)
    torch.testing.assert_close(a, b)
    hmodel, _ = _model(tiny_bert, 0, user_mode="history")
    hmodel.eval()
    fast = hmodel(torch.tensor([0]), torch.tensor([[4, 5, -1, -1]]), cand, all_items=True)
    slow = hmodel(torch.tensor([0]), torch.tensor([[4, 5, -1, -1]]), cand)
    torch.testing.assert_close(fast, slow)


def test_shared_state_excludes_personal(tiny_bert: str) -> None:
    model, _ = _model(tiny_bert, 0, id_residual=True)
    shared = model.shared_state()
    assert "user.personal.weight" not in shared and "user.personal.weight" in model.personal_state()
    assert "items.id_residual.weight" in shared and "items.proj.weight" in shared


def test_sequences_history_is_causal() -> None:
    seqs = Sequences.from_lists([np.array([10, 11, 12, 13]), np.array([20])])
    users, steps = seqs.samples()
    hist = seqs.history(users, steps, 2)
    assert hist.tolist() == [[-1, -1], [10, -1], [11, 10], [12, 11], [-1, -1]]
    b = make_batch(seqs, users, steps, history_len=2, negatives=3, num_items=30, rng=np.random.default_rng(0))
    assert b["candidates"][:, 0].tolist() == [10, 11, 12, 13, 20] and b["candidates"].shape == (5, 4)


def test_checkpoint_roundtrip_and_damage(tiny_bert: str, tmp_path: Path) -> None:
    model, _ = _model(tiny_bert, 0)
    ids = list(range(100, 112))
    path = save_checkpoint(model, ids, tmp_path / "ckpt", meta={"run": "test"})
    ck = load_checkpoint(path)
    assert ck.item_ids == ids and ck.meta["run"] == "test"
    v, b = model.all_item_vectors()
    torch.testing.assert_close(ck.item_vectors, v)
    serving = ServingModel(ck)
    hist = np.array([1, 2])
    model.eval()
    with torch.no_grad():
        expect = model(torch.tensor([0]), torch.tensor([[2, 1, -1, -1]]), torch.arange(12)[None], all_items=True)[0]
        expect = expect - model.scale * (model.user.personal.weight[0] @ v.T)  # serving has no personal vector
    np.testing.assert_allclose(serving.scores(hist), expect.numpy(), atol=1e-5)
    tv = serving.text_vectors(TEXTS[:2])
    np.testing.assert_allclose(tv, v[:2].numpy(), atol=1e-5)  # no ID residual in this model
    (path / "item_vectors.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="item_vectors.safetensors: checksum mismatch"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_config_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match="model.top-layers"):
        ModelConfig(top_layers=-1)
    with pytest.raises(ConfigError, match="model.dimm.*unknown"):
        config_from_flat({"model.dimm": 3})
    with pytest.raises(ConfigError, match="train.lr.*expected float"):
        config_from_flat({"train.lr": "fast"})
    cfg = config_from_flat({"model.dim": 16, "model.id-residual": "true", "train.loss": "bce"})
    assert cfg.model.dim == 16 and cfg.model.id_residual and cfg.train.loss == "bce"
    assert dataclasses.replace(TrainConfig(), epochs=2).epochs == 2


@pytest.mark.slow
def test_real_minilm_loads_offline() -> None:
    backbone, tok = load_backbone("minilm")
    assert backbone.config.num_hidden_layers == 6 and backbone.config.hidden_size == 384
    cache = compute_prefix(
        backbone, tok, ["Toy Story (1995). Animation.", "Toy Story 2"], top_layers=0, max_length=32, progress=False
    )
    assert cache.pooled is not None
    a, b = torch.nn.functional.normalize(cache.pooled, dim=-1)
    assert float(a @ b) > 0.5  # a real embedding: related titles are close


def test_cosine_score_keeps_logits_bounded_and_has_no_learned_scale(tiny_bert: str) -> None:
    model, _ = _model(tiny_bert, 0, "bottleneck", score="cosine", item_bias=False)
    assert "scale" not in dict(model.named_parameters())  # a fixed buffer: nothing to collapse
    assert "items.bias.weight" not in model.shared_state()  # frozen zero, never uploaded
    users, hist = torch.tensor([0, 1]), torch.tensor([[1, 2, -1, -1], [3, -1, -1, -1]])
    scores = model(users, hist, torch.tensor([[0, 4, 5], [6, 7, 8]]))
    assert scores.abs().max() <= 1.0 + 1e-5
    v, _ = model.items(torch.arange(len(TEXTS)))
    assert torch.allclose(v.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert torch.allclose(model.user_vectors(users, hist).norm(dim=-1), torch.ones(2), atol=1e-5)
    # personal (DP) mode: the raw personal vector (small at the start), not a unit-length one
    dp_model, _ = _model(tiny_bert, 0, "bottleneck", score="cosine", user_mode="personal")
    u = dp_model.user_vectors(users, None)
    assert torch.equal(u, dp_model.user.personal(users)) and (u.norm(dim=-1) < 0.5).all()


def test_pca_projection_init_is_orthonormal_and_centred(tiny_bert: str) -> None:
    from shared.model import pca_init_projection

    model, _ = _model(tiny_bert, 0, "bottleneck")
    pca_init_projection(model)
    w = model.items.proj.weight.detach()
    rank = min(w.shape[0], len(TEXTS) - 1)  # 12 items centred span at most 11 directions
    np.testing.assert_allclose((w[:rank] @ w[:rank].T).numpy(), np.eye(rank), atol=1e-4)
    model.eval()
    with torch.no_grad():
        t = model.items.proj(model.items.norm(model.items.features))
    np.testing.assert_allclose(t[:, :rank].mean(0).numpy(), 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="top-layers"):
        pca_init_projection(_model(tiny_bert, 1, "bottleneck")[0])


def _residual_model(tiny_bert: str, id_dropout: float, dropout: float = 0.0) -> Recommender:
    model, _ = _model(tiny_bert, 0, "bottleneck", id_residual=True, id_dropout=id_dropout, dropout=dropout)
    assert model.items.id_residual is not None
    with torch.no_grad():  # residuals as large as the text part, so a dropped one shows
        model.items.id_residual.weight.normal_(std=1.0)
    return model


def test_id_dropout_drops_whole_residuals_at_its_rate_in_training_only(tiny_bert: str) -> None:
    model = _residual_model(tiny_bert, 0.5)
    tower = model.items
    assert tower.id_residual is not None
    rows = torch.arange(len(TEXTS)).repeat(1000)  # (12000,): one draw per entry
    with torch.no_grad():
        text, res = tower.text_vectors(rows), tower.id_residual(rows)
        model.train()
        v1, _ = tower(rows)
        v2, _ = tower(rows)
        dropped = torch.isclose(v1, text, atol=1e-6).all(-1)
        kept = torch.isclose(v1, text + res, atol=1e-6).all(-1)
        assert bool((dropped ^ kept).all())  # a residual is dropped whole, and a kept one is not rescaled
        assert abs(float(dropped.float().mean()) - 0.5) < 0.03
        assert not torch.equal(v1, v2)  # a fresh draw per call
        model.eval()  # evaluation (and what all_item_vectors, serving and checkpoints read): always on
        torch.testing.assert_close(tower(rows)[0], text + res)
        v_all, _ = model.all_item_vectors()
        torch.testing.assert_close(v_all, tower.text_vectors(torch.arange(len(TEXTS))) + tower.id_residual.weight)
    always = _residual_model(tiny_bert, 1.0)
    always.train()
    with torch.no_grad():
        torch.testing.assert_close(always.items(rows)[0], always.items.text_vectors(rows))


def test_zero_id_dropout_is_the_plain_residual_model(tiny_bert: str) -> None:
    assert ModelConfig().id_dropout == 0.0
    model = _residual_model(tiny_bert, 0.0, dropout=0.1)
    tower = model.items
    assert tower.id_residual is not None
    model.train()
    rows = torch.tensor([[0, 3, 3], [5, 11, 2]])
    with torch.no_grad():
        torch.manual_seed(1)
        v, b = tower(rows)
        after = torch.get_rng_state()
        torch.manual_seed(1)  # the forward before id_dropout existed, with the same random stream
        old = tower.proj(tower.drop(tower.norm(tower.text_features(rows)))) + tower.id_residual(rows)
    torch.testing.assert_close(v, old, rtol=0, atol=0)
    assert torch.equal(after, torch.get_rng_state())  # no extra draw: training runs are unchanged
    assert b.shape == (2, 3)


def test_id_dropout_config_is_validated() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"model\.id-dropout.*\[0, 1\]"):
            ModelConfig(id_residual=True, id_dropout=bad)
    with pytest.raises(ConfigError, match=r"model\.id-dropout.*needs model\.id-residual"):
        ModelConfig(id_dropout=0.5)
    cfg = config_from_flat({"model.id-residual": "true", "model.id-dropout": 0.8})
    assert cfg.model.id_dropout == 0.8 and cfg.model.id_residual
