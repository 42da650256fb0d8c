"""Inference over a checkpoint: user vectors from a history that arrives with the request.

Serving never sees personal parameters (they stay on devices): a request's user vector is the
shared history summary (recency-weighted mean of the history's item vectors through the shared
``mix`` map). New (cold-start) items get a text-tower vector from the checkpoint's adapters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shared.backbone import PrefixCache, compute_prefix, load_backbone
from shared.checkpoint import Checkpoint
from shared.errors import UnknownItemError
from shared.model import ItemTower

log = logging.getLogger(__name__)


def normalise_new(vectors: np.ndarray, score: str, max_norm: float) -> np.ndarray:
    """New items' vectors (``(D,)`` or ``(C, D)``), normalised as :class:`ItemTower` normalises the catalogue's.

    ``cosine``: unit length (as ``F.normalize`` in ``ItemTower.forward``). ``dot``: the tower does
    not normalise, so a vector is only shortened to ``max_norm``, the longest catalogue vector's
    length: no new item can outrank the catalogue by its length alone.
    """
    v = np.asarray(vectors, np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    if score == "cosine":
        return v / np.maximum(n, np.float32(1e-12))
    factor = np.minimum(1.0, max_norm / np.maximum(n.astype(np.float64), 1e-12))
    return v * factor.astype(np.float32)


class ServingModel:
    """Scores items for a history, from a loaded :class:`Checkpoint` (numpy, thread-safe reads)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.cfg = ckpt.config
        self.vectors = ckpt.item_vectors.float().numpy().copy()  # (N, D)
        self.bias = ckpt.item_bias.float().numpy().copy()  # (N,)
        self.item_ids = list(ckpt.item_ids)
        self.row_of = {iid: r for r, iid in enumerate(self.item_ids)}
        s = ckpt.shared
        self.scale = float(s["scale"]) if "scale" in s else 1.0
        L = self.cfg.history_len
        rec = s.get("user.recency.weight")
        self.recency = rec.squeeze(-1).float().numpy() if rec is not None else np.zeros(L, np.float32)
        mw, mb = s.get("user.mix.weight"), s.get("user.mix.bias")
        self.mix_w = mw.float().numpy() if mw is not None else np.eye(self.cfg.dim, dtype=np.float32)
        self.mix_b = mb.float().numpy() if mb is not None else np.zeros(self.cfg.dim, np.float32)
        self._lock = threading.Lock()
        self._text_tower: tuple[Any, Any, ItemTower] | None = None
        norms = np.linalg.norm(self.vectors, axis=1)
        #: the catalogue's range, which a cold item's vector and bias must stay within
        self.max_norm = float(norms.max()) if len(norms) else 1.0
        self.bias_range = (float(self.bias.min()), float(self.bias.max())) if len(self.bias) else (0.0, 0.0)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: Sequence[int]) -> np.ndarray:
        """Catalogue rows of ``item_ids``; raises :class:`UnknownItemError` for the first unknown id."""
        out = np.empty(len(item_ids), np.int64)
        for i, iid in enumerate(item_ids):
            r = self.row_of.get(iid)
            if r is None:
                raise UnknownItemError(iid)
            out[i] = r
        return out

    def user_vector(self, history_rows: np.ndarray) -> np.ndarray:
        """(D,) user vector from history rows (oldest first, newest last): the latest ``history_len`` only."""
        h = history_rows[::-1][: self.cfg.history_len]  # newest first
        if not len(h):
            return np.zeros(self.vectors.shape[1], np.float32)
        logits = self.recency[: len(h)]
        w = np.exp(logits - logits.max())
        w /= w.sum()
        summary = w @ self.vectors[h]
        u = summary @ self.mix_w.T + self.mix_b
        # as UserTower.forward and the central evaluation: unit length in history mode under cosine only;
        # in personal mode (record-level DP) the plain mean, whose length weighs the dot against the bias
        if self.cfg.score == "cosine" and self.cfg.user_mode == "history":
            u = u / max(float(np.linalg.norm(u)), 1e-12)
        return u

    def scores(self, history_rows: np.ndarray, candidate_rows: np.ndarray | None = None) -> np.ndarray:
        """Scores of candidate rows (default: every item) for a history."""
        u = self.user_vector(history_rows)
        if candidate_rows is None:
            return self.scale * (self.vectors @ u) + self.bias
        return self.scale * (self.vectors[candidate_rows] @ u) + self.bias[candidate_rows]

    def top_k(
        self, history_rows: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows and their scores, excluding ``exclude`` rows."""
        s = self.scores(history_rows)
        if exclude is not None and len(exclude):
            s[exclude] = -np.inf
        k = min(k, int(np.isfinite(s).sum()))
        top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        top = top[np.argsort(-s[top], kind="stable")][:k]
        return top, s[top]

    # ---------------------------------------------------------------------------- cold-start items

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """Text-tower vectors (n, D) of new item texts, with the checkpoint's adapters (no ID residual)."""
        with self._lock:
            if self._text_tower is None:
                backbone, tok = load_backbone(self.cfg.backbone)
                probe = compute_prefix(
                    backbone, tok, ["x"], top_layers=self.cfg.top_layers, max_length=self.cfg.max_length, progress=False
                )
                tower = ItemTower(self.cfg, probe, backbone if self.cfg.top_layers else None)
                own = {k[len("items.") :]: v for k, v in self.ckpt.shared.items() if k.startswith("items.")}
                own = {k: v for k, v in own.items() if not k.startswith(("bias.", "id_residual."))}
                missing = tower.load_state_dict(own, strict=False)
                unexpected = list(missing.unexpected_keys)
                if unexpected:
                    raise ValueError(f"checkpoint has parameters the item tower lacks: {unexpected[:3]}")
                tower.eval()
                self._text_tower = (backbone, tok, tower)
            backbone, tok, tower = self._text_tower
        cache = compute_prefix(
            backbone,
            tok,
            texts,
            top_layers=self.cfg.top_layers,
            max_length=self.cfg.max_length,
            progress=False,
        )
        with torch.no_grad():
            feats = _features(tower, cache)
            out = tower.proj(tower.norm(feats)).numpy()  # ItemTower.forward in eval mode, no ID residual
        return normalise_new(out, self.cfg.score, self.max_norm)

    def normalise(self, vector: np.ndarray) -> np.ndarray:
        """A new item's vector, normalised as :class:`ItemTower` normalises the catalogue's (:func:`normalise_new`)."""
        return normalise_new(vector, self.cfg.score, self.max_norm)

    def out_of_range(self, vector: np.ndarray, bias: float) -> str | None:
        """Why a new item's stored vector or bias is not one :meth:`normalise` could give (None: fine)."""
        v = np.asarray(vector, np.float64)
        if v.shape != (self.vectors.shape[1],):
            return f"vector has shape {v.shape}, expected ({self.vectors.shape[1]},)"
        if not np.isfinite(v).all() or not np.isfinite(bias):
            return "vector or bias is not finite"
        n = float(np.linalg.norm(v))
        if self.cfg.score == "cosine" and abs(n - 1.0) > 1e-3:
            return f"vector norm {n:.4g}, expected 1 (model.score = cosine)"
        if self.cfg.score == "dot" and n > self.max_norm * (1 + 1e-3):
            return f"vector norm {n:.4g} exceeds the longest catalogue vector ({self.max_norm:.4g}, model.score = dot)"
        lo, hi = self.bias_range
        tol = 1e-4 * max(1.0, abs(lo), abs(hi))
        if not lo - tol <= bias <= hi + tol:
            return f"bias {bias:.4g} outside the catalogue's range [{lo:.4g}, {hi:.4g}]"
        return None

    def add_item(self, item_id: int, vector: np.ndarray, bias: float) -> int:
        """Append a new item's vector and bias; returns its row."""
        if item_id in self.row_of:
            raise ValueError(f"item id {item_id} already exists")
        with self._lock:
            self.vectors = np.vstack([self.vectors, vector[None, :].astype(np.float32)])
            self.bias = np.append(self.bias, np.float32(bias))
            self.item_ids.append(item_id)
            self.row_of[item_id] = len(self.item_ids) - 1
        return self.row_of[item_id]

    def remove_item(self, item_id: int) -> int:
        """Drop an added item's vector and bias (later rows move up by one); returns the row it had."""
        row = self.row_of[item_id]
        with self._lock:
            self.vectors = np.delete(self.vectors, row, axis=0)
            self.bias = np.delete(self.bias, row)
            del self.item_ids[row]
            self.row_of = {iid: r for r, iid in enumerate(self.item_ids)}
        return row


def _features(tower: ItemTower, cache: PrefixCache) -> torch.Tensor:
    if cache.top_layers == 0:
        assert cache.pooled is not None
        return tower.adapter(cache.pooled.float())
    assert cache.hidden is not None and cache.mask is not None
    return tower.run_top(cache.hidden.float(), cache.mask)  # in the precision the catalogue's vectors had
