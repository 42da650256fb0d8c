from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.central import run_bprmf, run_mostpop, train_central
from shared.config import Config, DataConfig, ModelConfig, TrainConfig
from shared.pipeline import build_model, prepare


def _cfg(tiny_data: Path, tiny_bert: str, tmp_path: Path) -> Config:
    return Config(
        DataConfig(dir=str(tiny_data), cache_dir=str(tmp_path / "cache")),
        ModelConfig(backbone=tiny_bert, dim=16, max_length=32, history_len=8),
        TrainConfig(epochs=4, batch_size=16, negatives=8, lr=1e-2),
    )


def test_central_run_learns_and_reports_best_validation_epoch(tiny_data: Path, tiny_bert: str, tmp_path: Path) -> None:
    cfg = _cfg(tiny_data, tiny_bert, tmp_path)
    prep = prepare(cfg, progress=False)
    assert prep.split.num_users == 8 and prep.cache.pooled is not None and prep.cache.pooled.shape == (120, 32)
    model = build_model(cfg.model, prep, prep.split.num_users)
    res = train_central(model, prep.split, cfg.train)
    losses = [p["loss"] for p in res.curve]
    assert len(losses) == 4 and losses[-1] < losses[0]
    best = max(res.curve, key=lambda p: p["val_hr@10"] + p["val_ndcg@10"])
    assert res.best_epoch == best["epoch"]
    s = res.summary()
    assert set(s) >= {"hr@10", "ndcg@10", "recall@20", "ndcg@20", "seconds"}
    assert all(0.0 <= s[k] <= 1.0 for k in ("hr@10", "ndcg@10", "recall@20", "ndcg@20"))


def test_baselines_in_the_same_harness(tiny_data: Path, tiny_bert: str, tmp_path: Path) -> None:
    prep = prepare(_cfg(tiny_data, tiny_bert, tmp_path), progress=False)
    mp = run_mostpop(prep.split)
    # users only ever touch items 1..40: popularity ranks them above the other 80 items
    assert mp.test["hr@10"] > 0.3
    bpr = run_bprmf(prep.split, dim=8, epochs=5, lr=1e-2)
    assert bpr.best_epoch in range(5) and np.isfinite(bpr.test["ndcg@10"])


def test_central_k1_takes_fed_k1s_tower_and_trains_its_lora(tiny_data: Path, tiny_bert: str, tmp_path: Path) -> None:
    import dataclasses

    import torch

    from client.config import parse_run_config
    from simulations.bench_core import K_RUNS, k_model
    from simulations.presets import PRESETS
    from simulations.runner import run_config

    cfg = _cfg(tiny_data, tiny_bert, tmp_path)
    top = parse_run_config(run_config(PRESETS["fed-k1"])).model
    assert k_model(cfg.model, 0) == cfg.model and K_RUNS == ("central-k0", "central-k1", "central-k2")
    mcfg = k_model(cfg.model, 1)
    assert (mcfg.top_layers, mcfg.adapter, mcfg.top_tokens, mcfg.top_dropout) == (1, "lora", top.top_tokens, False)
    assert (
        dataclasses.replace(mcfg, **{f: getattr(cfg.model, f) for f in ("top_layers", "top_tokens", "top_dropout")})
        == cfg.model
    )
    mcfg = dataclasses.replace(mcfg, top_tokens=8)  # the tiny texts' 32 tokens: a cap that bites
    prep = prepare(dataclasses.replace(cfg, model=mcfg), progress=False)
    model = build_model(mcfg, prep, prep.split.num_users)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    tower = {n: p.requires_grad for n, p in model.named_parameters() if n.startswith("items.adapter.")}
    assert lora and all(trains == ("lora_" in n) for n, trains in tower.items())  # the BertLayer itself: frozen
    res = train_central(model, prep.split, dataclasses.replace(cfg.train, epochs=2))
    assert len(res.curve) == 2 and 0.0 <= res.summary()["hr@10"] <= 1.0
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n].detach(), v) for n, v in lora.items() if "lora_B" in n)  # B starts at 0
