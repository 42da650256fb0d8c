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
