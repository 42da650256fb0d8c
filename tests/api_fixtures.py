"""Shared builders for the API tests: a tiny catalogue, a random (untrained) checkpoint, settings."""

from __future__ import annotations

from pathlib import Path

import torch

from shared.backbone import PrefixCache
from shared.checkpoint import save_checkpoint
from shared.config import ModelConfig
from shared.data import load_ml100k
from shared.model import Recommender

TOKEN = "test-token"


def make_checkpoint(
    data_dir: Path, backbone: str, out: Path, *, seed: int = 0, score: str = "dot", proj_scale: float = 1.0
) -> Path:
    """A checkpoint over random 32-wide text features of the tiny catalogue (nothing is trained).

    ``proj_scale`` multiplies the item projection, as training grows it (a trained federated tower's
    raw text vectors had norms of 835 and 19,088 where its cosine catalogue vectors have norm 1).
    """
    ids = load_ml100k(data_dir).catalogue.ids
    torch.manual_seed(seed)
    cache = PrefixCache(0, pooled=torch.randn(len(ids), 32))
    cfg = ModelConfig(
        backbone=backbone, top_layers=0, adapter="bottleneck", bottleneck=16, dim=16, history_len=10, score=score
    )
    model = Recommender(cfg, cache, num_users=2)
    with torch.no_grad():
        model.items.bias.weight.normal_(0, 0.1)
        model.items.proj.weight.mul_(proj_scale)
    return save_checkpoint(model, ids, out, meta={"source": "tests"})


def env(data_dir: Path, ckpt: Path, state_dir: Path, **extra: object) -> dict[str, str]:
    out = {
        "FEDXREC_CHECKPOINT": str(ckpt),
        "FEDXREC_DATA_DIR": str(data_dir),
        "FEDXREC_STATE_DIR": str(state_dir),
        "FEDXREC_TOKEN": TOKEN,
        "FEDXREC_MAX_HISTORY": "50",
        "FEDXREC_MAX_K": "30",
        "FEDXREC_MAX_SCORE_ITEMS": "40",
    }
    out.update({f"FEDXREC_{k.upper()}": str(v) for k, v in extra.items()})
    return out
