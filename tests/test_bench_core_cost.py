"""The core benchmark's cost figures: the federated client's batch, and an honest no-cache baseline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from client.config import parse_run_config
from shared.config import Config, DataConfig, ModelConfig
from shared.pipeline import prepare
from simulations.bench_core import fed_client_batch, interleaved_medians, step_models
from simulations.presets import PRESETS
from simulations.runner import run_config


def test_cost_batch_is_the_fed_clients_and_uncached_baseline_matches(
    tiny_bert: str, tiny_data: Path, tmp_path: Path
) -> None:
    rc = parse_run_config(run_config(PRESETS["fed"]))
    cfg = Config(data=DataConfig(dir=str(tiny_data), cache_dir=str(tmp_path / "cache")), model=ModelConfig())
    prep = prepare(cfg, progress=False)
    batch = fed_client_batch(prep, rc)
    assert rc.model.user_mode == "history" and batch.hist is not None
    assert batch.about["user_mode"] == "history" and batch.about["shared_negatives"] == rc.core.train.negatives
    b = int(batch.about["samples"])
    assert b == min(rc.local.batch_size, int(batch.about["node_user_train_items"]))
    assert batch.cand.shape == (b, 1 + rc.core.train.negatives) and (batch.users == 0).all()
    assert (batch.cand[:, 1:] == batch.cand[0, 1:]).all()  # negatives shared by the batch
    rows = np.unique(np.concatenate([batch.cand.ravel(), batch.hist[batch.hist >= 0]]))
    assert batch.about["distinct_rows"] == len(rows) < batch.about["sequences_before_dedup"]

    mcfg = dataclasses.replace(rc.model, backbone=tiny_bert, max_length=32, dropout=0.0)
    models = step_models(prep, mcfg, cfg.data.cache_dir, ks=(0, 1))
    assert set(models) == {"k0", "k1", "k1_uncached", "k1_top_dropout"}
    flipped = models["k1_top_dropout"].cfg
    assert flipped.top_dropout is not mcfg.top_dropout and flipped == dataclasses.replace(
        models["k1"].cfg, top_dropout=flipped.top_dropout
    )
    with torch.no_grad():  # the baseline computes the same features from tokens (the cache holds float16)
        r = torch.as_tensor(rows)
        cached, uncached = models["k1"].items, models["k1_uncached"].items
        cached.eval()
        uncached.eval()
        torch.testing.assert_close(uncached.text_features(r), cached.text_features(r), atol=5e-3, rtol=5e-3)
        other = models["k1_top_dropout"].items
        other.eval()  # the same function at evaluation: only training's dropout differs
        torch.testing.assert_close(other.text_features(r), cached.text_features(r))
    # under a token cap the baseline still runs the lower layers over every real token, then cuts
    capped = step_models(prep, mcfg, cfg.data.cache_dir, ks=(1,), top=dataclasses.replace(mcfg, top_tokens=8))
    with torch.no_grad():
        cached, uncached = capped["k1"].items, capped["k1_uncached"].items
        cached.eval()
        uncached.eval()
        assert int(cached.lengths[r].max()) > 8  # the cap bites
        torch.testing.assert_close(uncached.text_features(r), cached.text_features(r), atol=5e-3, rtol=5e-3)
    med = interleaved_medians(models, batch, rc, repeats=1)
    assert set(med) == set(models) and all(v > 0 for v in med.values())
