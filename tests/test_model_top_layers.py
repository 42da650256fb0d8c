"""The top-layer item tower (k >= 1): LoRA's identity start, what a step trains, and the reduced-cost path.

The reduced path (each distinct row once, rows batched by token length and cut to their longest) must
give the plain path's item vectors and gradients; bf16 autocast stays within a stated tolerance.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from client.train import subset_scores
from shared.backbone import compute_prefix, extended_mask, load_backbone, mean_pool
from shared.config import ConfigError, ModelConfig
from shared.model import Recommender, bf16_supported, top_dtype
from shared.training import sample_losses

# token lengths from 4 to past 40, so rows fall into several length buckets and the cut matters
TEXTS = [f"Movie {i}." + " A long story about many things" * (i % 7) for i in range(14)]
MAX_LENGTH = 48
#: bf16 autocast of the top layers vs fp32: item vectors of unit length differ by at most this much
BF16_ATOL = 3e-2

USERS = torch.tensor([0, 1, 0])
HISTORY = torch.tensor([[3, 5, 2, -1], [5, 13, -1, -1], [2, 3, 5, 9]])  # rows repeat across samples
CANDIDATES = torch.tensor([[1, 5, 7, 12], [13, 5, 7, 12], [9, 5, 7, 12]])  # negatives shared by the batch


def _model(tiny_bert: str, k: int = 1, adapter: str = "lora", **kw: object) -> tuple[Recommender, Any]:
    """A k-layer model in fp32 unless ``top_precision`` says otherwise (the exactness tests need fp32)."""
    kw = {"top_precision": "fp32", **kw}
    backbone, tok = load_backbone(tiny_bert)
    cache = compute_prefix(backbone, tok, TEXTS, top_layers=k, max_length=MAX_LENGTH, progress=False)
    cfg = ModelConfig(
        backbone=tiny_bert,
        top_layers=k,
        adapter=adapter,
        dim=8,
        max_length=MAX_LENGTH,
        history_len=4,
        dropout=0.0,
        score="cosine",
        item_bias=False,
        **kw,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    return Recommender(cfg, cache, num_users=2, backbone=backbone), backbone


def _plain(model: Recommender) -> Recommender:
    """A copy that runs every row, repeats included, at the cache's full length (the path before)."""
    plain = copy.deepcopy(model)
    tower = plain.items

    def text_features(rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1)
        return tower.adapter(tower.hidden[flat].float(), tower.mask[flat]).view(*rows.shape, -1)

    tower.text_features = text_features  # type: ignore[method-assign]
    return plain


def _loss(model: Recommender) -> torch.Tensor:
    return sample_losses(model(USERS, HISTORY, CANDIDATES), "softmax", 0.1).mean()


def test_texts_span_several_length_buckets(tiny_bert: str) -> None:
    model, _ = _model(tiny_bert)
    lengths = model.items.lengths
    assert int(lengths.min()) <= 16 and int(lengths.max()) > 32 and int(lengths.max()) < MAX_LENGTH


@pytest.mark.parametrize("adapter", ["lora", "bottleneck"])
def test_fresh_k1_item_vectors_equal_the_frozen_base(tiny_bert: str, adapter: str) -> None:
    model, backbone = _model(tiny_bert, adapter=adapter)
    model.eval()
    rows = torch.tensor([[4, 0, 4], [13, 2, 0]])  # repeats, and rows of different lengths
    with torch.no_grad():
        v, _ = model.items(rows)
        tower = model.items
        hidden, mask = tower.hidden[rows.reshape(-1)].float(), tower.mask[rows.reshape(-1)]
        out = backbone.encoder.layer[-1](hidden, attention_mask=extended_mask(mask, hidden.dtype))
        base = mean_pool(out[0] if isinstance(out, tuple) else out, mask)  # the frozen top layer, no adapter
        expect = torch.nn.functional.normalize(tower.proj(tower.norm(base)), dim=-1).view(2, 3, -1)
    torch.testing.assert_close(v, expect, atol=1e-5, rtol=1e-5)


def test_one_step_changes_lora_and_head_only_and_all_of_them(tiny_bert: str) -> None:
    model, _ = _model(tiny_bert)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    lora_a = {n for n in trainable if "lora_A" in n}
    lora_b = {n for n in trainable if "lora_B" in n}
    head = {"items.norm.weight", "items.norm.bias", "items.proj.weight", "items.proj.bias"}
    assert len(lora_a) == len(lora_b) == 6  # query, key, value and the three dense layers of one BertLayer
    assert head <= trainable and not any(n.startswith("items.adapter.layer") and "lora_" not in n for n in trainable)
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD([params[n] for n in sorted(trainable)], lr=0.05)
    opt.zero_grad()
    _loss(model).backward()
    # every trainable parameter is reached by the loss (a detached path would leave None or zeros) ...
    grads = {n: params[n].grad for n in trainable}
    missing = [n for n in trainable - lora_a if (g := grads[n]) is None or not bool(g.abs().sum() > 0)]
    assert not missing, f"no gradient reached {missing}"
    # ... but A's gradient is exactly zero while B = 0 (LoRA's identity start): A moves from the second step
    assert all((g := grads[n]) is not None and not bool(g.any()) for n in lora_a)
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable - lora_a
    opt.zero_grad()
    _loss(model).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable  # and nothing else: the frozen BertLayer's weights stay as they were


def test_reduced_path_gives_the_plain_path_vectors_and_gradients(tiny_bert: str) -> None:
    model, _ = _model(tiny_bert)
    with torch.no_grad():  # a trained-looking adapter: LoRA B away from zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    plain = _plain(model)
    model.eval()
    plain.eval()
    rows = torch.cat([HISTORY.clamp_min(0), CANDIDATES], dim=1)
    torch.testing.assert_close(model.items(rows)[0], plain.items(rows)[0], atol=1e-5, rtol=1e-5)
    # the sum over repeats of a row's gradient, taken once: the same gradients
    _loss(model).backward()
    _loss(plain).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    plain_grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    assert grads.keys() == plain_grads.keys()
    for n, g in grads.items():
        assert g is not None and plain_grads[n] is not None, n
        try:
            torch.testing.assert_close(g, plain_grads[n], atol=1e-5, rtol=1e-4)
        except AssertionError as e:
            raise AssertionError(f"{n}: {e}") from None


def test_forward_paths_agree_with_top_layers(tiny_bert: str) -> None:
    model, _ = _model(tiny_bert)
    model.eval()
    with torch.no_grad():
        direct = model(USERS, HISTORY, CANDIDATES)
        every = model(USERS, HISTORY, CANDIDATES, all_items=True)
        subset = subset_scores(model, USERS.numpy(), HISTORY.numpy(), CANDIDATES.numpy())
    torch.testing.assert_close(direct, every, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(direct, subset, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("adapter", ["lora", "bottleneck"])
def test_bf16_item_vectors_within_tolerance(tiny_bert: str, adapter: str) -> None:
    fp32, _ = _model(tiny_bert, adapter=adapter)
    bf16, _ = _model(tiny_bert, adapter=adapter, top_precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    assert bf16.items.top_dtype == torch.bfloat16
    with torch.no_grad():
        a, b = fp32.all_item_vectors()[0], bf16.all_item_vectors()[0]
    assert not torch.equal(a, b)  # autocast really ran in bf16
    torch.testing.assert_close(b, a, atol=BF16_ATOL, rtol=0.0)
    assert b.dtype == torch.float32 and bool(torch.isfinite(b).all())
    # and it trains: the adapter's gradient under autocast is the fp32 one within 5% (global norm; the
    # query/key LoRA gradients are ~1e3 times smaller than the rest and noisier in bf16), none vanishes
    for m in (fp32, bf16):
        m.eval()  # no dropout (the BertLayer's own included): the same function, in two precisions
        sample_losses(m(USERS, HISTORY, CANDIDATES), "softmax", 0.1).mean().backward()
    ref = {n: p.grad for n, p in fp32.named_parameters() if p.requires_grad and "adapter" in n}
    got = {n: p.grad for n, p in bf16.named_parameters() if n in ref}
    moving = [n for n, g in ref.items() if g is not None and bool(g.any())]  # not A / down: zero while B / up is
    assert moving and all((g := got[n]) is not None and bool(g.any()) for n in moving)
    r = torch.cat([ref[n].reshape(-1) for n in moving])  # type: ignore[union-attr]
    g = torch.cat([got[n].reshape(-1) for n in moving])  # type: ignore[union-attr]
    assert float((g - r).norm()) <= 0.05 * float(r.norm())


def test_top_tokens_caps_what_the_top_layers_read(tiny_bert: str) -> None:
    exact, _ = _model(tiny_bert)
    capped, _ = _model(tiny_bert, top_tokens=8)
    capped.load_state_dict(exact.state_dict())
    exact.eval()
    capped.eval()
    rows = torch.arange(len(TEXTS))
    long = rows[exact.items.lengths > 8]
    tower = exact.items
    with torch.no_grad():
        got = capped.items.text_features(rows)
        first = tower.adapter(tower.hidden[:, :8].float(), tower.mask[:, :8])  # the first 8 cached tokens only
        full = exact.items.text_features(rows)
    torch.testing.assert_close(got, first, atol=1e-5, rtol=1e-5)
    assert len(long) and not torch.allclose(got[long], full[long], atol=1e-3)  # a different model, opt-in
    short = rows[exact.items.lengths <= 8]
    torch.testing.assert_close(got[short], full[short], atol=1e-5, rtol=1e-5)


def test_top_dropout_off_makes_training_forwards_deterministic(tiny_bert: str) -> None:
    rows = torch.arange(len(TEXTS))
    outs: dict[object, Any] = {}
    for on in (True, False):
        model, _ = _model(tiny_bert, top_dropout=on)  # the tiny BERT's dropout rates are 0.1
        model.train()
        layer = model.items.adapter.layer
        assert isinstance(layer, torch.nn.Module) and layer.training is on and model.items.training
        outs[on] = [model.items.text_features(rows) for _ in range(2)]
        model.eval()
        with torch.no_grad():
            outs[(on, "eval")] = model.items.text_features(rows)
    assert not torch.allclose(outs[True][0], outs[True][1])
    torch.testing.assert_close(outs[False][0], outs[False][1], atol=0.0, rtol=0.0)
    torch.testing.assert_close(outs[(True, "eval")], outs[(False, "eval")])  # the same evaluated function


def test_top_layer_knobs_are_validated_by_name() -> None:
    with pytest.raises(ConfigError, match="model.top-precision"):
        ModelConfig(top_precision="fp16")
    with pytest.raises(ConfigError, match="model.top-tokens"):
        ModelConfig(top_tokens=-1)
    assert ModelConfig().top_precision == "auto" and ModelConfig().top_tokens == 0
    assert top_dtype("fp32") == torch.float32 and top_dtype("bf16") == torch.bfloat16
    assert top_dtype("auto") == (torch.bfloat16 if bf16_supported() else torch.float32)


def test_bf16_is_native_only_where_the_cpu_says_so() -> None:
    # "auto" must not pick an emulated bf16 (AVX-512 without BF16: 2.5x slower than fp32 here)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU flags from")
    flags = set(cpuinfo.read_text().split())
    assert bf16_supported() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_lengths_follow_the_last_real_token(tiny_bert: str) -> None:
    from shared.backbone import PrefixCache
    from shared.model import ItemTower

    backbone, _ = load_backbone(tiny_bert)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.int8)  # right, none, left padded
    cache = PrefixCache(1, hidden=torch.zeros(3, 4, 32, dtype=torch.float16), mask=mask)
    cfg = ModelConfig(backbone=tiny_bert, top_layers=1, dim=8)
    with pytest.raises(ValueError, match="backbone"):
        ItemTower(cfg, cache)
    assert ItemTower(cfg, cache, backbone).lengths.tolist() == [2, 4, 4]  # a left-padded row is never cut
