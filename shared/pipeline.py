"""Glue that turns a :class:`~shared.config.Config` into data, split, cache and model objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shared.backbone import PrefixCache, cached_prefix, load_backbone
from shared.config import Config, DataConfig, ModelConfig
from shared.data import Dataset, default_data_dir, load_dataset
from shared.model import Recommender
from shared.splits import Split, cached_split

log = logging.getLogger(__name__)


def data_dir(cfg: DataConfig) -> Path:
    return Path(cfg.dir) if cfg.dir else default_data_dir()


@dataclass
class Prepared:
    """Everything a run needs besides the model's trainable state."""

    dataset: Dataset
    split: Split
    cache: PrefixCache
    cache_path: Path
    backbone: nn.Module | None


def prepare(cfg: Config, *, progress: bool = True) -> Prepared:
    """Load the dataset, its persisted split and the item-prefix cache for ``cfg``."""
    ds = load_dataset(cfg.data.dataset, data_dir(cfg.data), **_kg_kwargs(cfg.data))
    split = cached_split(
        ds.interactions,
        len(ds.catalogue),
        cfg.data.cache_dir,
        seed=cfg.data.split_seed,
        cold_fraction=cfg.data.cold_fraction,
    )
    backbone, tok = load_backbone(cfg.model.backbone)
    cache, path = cached_prefix(
        cfg.model.backbone,
        ds.catalogue.texts(),
        cfg.data.cache_dir,
        top_layers=cfg.model.top_layers,
        max_length=cfg.model.max_length,
        model=backbone,
        tok=tok,
        progress=progress,
    )
    return Prepared(ds, split, cache, path, backbone if cfg.model.top_layers > 0 else None)


def _kg_kwargs(cfg: DataConfig) -> dict[str, object]:
    return {"kg_version": cfg.kg_version} if cfg.dataset == "ml-100k" else {}


def build_model(mcfg: ModelConfig, prep: Prepared, num_users: int, seed: int = 0) -> Recommender:
    torch.manual_seed(seed)
    return Recommender(mcfg, prep.cache, num_users, prep.backbone)
