"""Checkpoints: a peft-compatible adapter directory plus the fused item vectors.

Layout of a checkpoint directory::

    adapter_config.json          # peft LoraConfig (k > 0, LoRA) or the fedxrec adapter description
    adapter_model.safetensors    # the shared trainable parameters (LoRA weights, heads, biases)
    item_vectors.safetensors     # fused item vectors (N, D), biases (N,), catalogue item ids (N,)
    fedxrec.json                 # model config, metadata, and sha256 of every file above

Loading verifies every file's checksum, so a damaged checkpoint is a :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shared.config import ModelConfig
from shared.errors import CheckpointError
from shared.io import atomic_dir, file_digest
from shared.model import LORA_TARGETS, Recommender

FORMAT = "fedxrec-checkpoint/1"
FILES = ("adapter_config.json", "adapter_model.safetensors", "item_vectors.safetensors")


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint."""

    config: ModelConfig
    shared: dict[str, torch.Tensor]
    item_vectors: torch.Tensor  # (N, D)
    item_bias: torch.Tensor  # (N,)
    item_ids: list[int]
    meta: dict[str, Any]


def save_checkpoint(
    model: Recommender, item_ids: list[int], path: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s non-personal parameters and fused item vectors to ``path`` (atomically)."""
    path = Path(path)
    vecs, bias = model.all_item_vectors()
    with atomic_dir(path) as tmp:
        cfg = model.cfg
        if cfg.top_layers > 0 and cfg.adapter == "lora":
            LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS).save_pretrained(
                str(tmp)
            )
        else:
            (tmp / "adapter_config.json").write_text(
                json.dumps({"peft_type": None, "adapter": "bottleneck", "bottleneck": cfg.bottleneck}, indent=2)
            )
        # every non-personal parameter: frozen ones too (model.train-tower = false keeps the public start)
        save_file({k: v.contiguous() for k, v in model.public_state().items()}, str(tmp / "adapter_model.safetensors"))
        save_file(
            {
                "vectors": vecs.contiguous(),
                "bias": bias.contiguous(),
                "item_ids": torch.tensor(item_ids, dtype=torch.int64),
            },
            str(tmp / "item_vectors.safetensors"),
        )
        manifest = {
            "format": FORMAT,
            "model": dataclasses.asdict(cfg),
            "meta": meta or {},
            "sha256": {f: file_digest(tmp / f) for f in FILES},
        }
        (tmp / "fedxrec.json").write_text(json.dumps(manifest, indent=2))
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint; raises :class:`CheckpointError` naming the bad file."""
    path = Path(path)
    mpath = path / "fedxrec.json"
    if not mpath.exists():
        raise CheckpointError(f"{path}: not a checkpoint (no fedxrec.json)")
    try:
        manifest = json.loads(mpath.read_text())
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        sums = manifest["sha256"]
        cfg = ModelConfig(**manifest["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mpath}: damaged manifest: {e}") from e
    for f in FILES:
        fp = path / f
        if not fp.exists():
            raise CheckpointError(f"{fp}: missing")
        if file_digest(fp) != sums.get(f):
            raise CheckpointError(f"{fp}: checksum mismatch (damaged or modified)")
    try:
        shared = load_file(str(path / "adapter_model.safetensors"))
        iv = load_file(str(path / "item_vectors.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable tensors: {e}") from e
    return Checkpoint(cfg, shared, iv["vectors"], iv["bias"], iv["item_ids"].tolist(), manifest.get("meta", {}))
