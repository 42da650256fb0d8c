"""The recommender: a BERT item tower with adapters, and a user side with personal parameters.

Item vector (D) = proj(adapted text features) [+ ID residual]; score(u, i) = scale * <u, v_i> + b_i.
``id_dropout`` zeroes an item's ID residual at that rate in training (DropoutNet), so that the text
part learns to stand for an item without one (a cold item).
With ``score = "cosine"`` both vectors have unit length and the scale is fixed at 1; with
``item_bias = False`` the bias is a frozen zero (not trained, never uploaded).

* ``top_layers = 0``: a residual bottleneck adapter over the cached pooled backbone output.
* ``top_layers = k > 0``: the backbone's top ``k`` BertLayers run in training on cached hidden
  states, with LoRA (peft, on query/key/value/dense) or a bottleneck adapter after each layer.

User vector: ``personal`` mode = a personal vector only (record-level DP mode: a sample's loss
depends on that sample alone); ``history`` mode = a recency-weighted mean of the user's history item
vectors through a shared linear map, plus the personal vector.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from shared.backbone import PrefixCache, extended_mask, mean_pool
from shared.config import ModelConfig

log = logging.getLogger(__name__)

LORA_TARGETS = ["query", "key", "value", "dense"]
#: parameter-name prefixes that never leave a device
PERSONAL_PREFIXES = ("user.personal.",)
#: token-length bucket edges for the top layers: rows of a bucket run together, cut to their longest
LENGTH_BUCKETS = (16, 32, 64)


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16).

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is true on any AVX-512 core,
    where bf16 is emulated: there a k = 1 client step measured 2.5x *slower* in bf16 than in fp32.
    """
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return bool(torch.backends.mkldnn.is_available() and any(getattr(cpu, c, lambda: False)() for c in checks))


def top_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of the top layers for ``model.top-precision`` (``auto``: bf16 where native)."""
    if precision == "bf16" or (precision == "auto" and bf16_supported()):
        return torch.bfloat16
    return torch.float32


class Bottleneck(nn.Module):
    """Residual bottleneck adapter: x + up(gelu(down(x))), up zero-initialised (identity at start)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.up = nn.Linear(hidden, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class TopLayers(nn.Module):
    """The backbone's top ``k`` BertLayers over cached hidden states, then masked mean pooling."""

    def __init__(self, backbone: Any, k: int, cfg: ModelConfig) -> None:
        super().__init__()
        layers = backbone.encoder.layer[len(backbone.encoder.layer) - k :]
        self.layer = nn.ModuleList(copy.deepcopy(list(layers)))
        for p in self.layer.parameters():
            p.requires_grad_(False)
        self.dropout = cfg.top_dropout
        width = backbone.config.hidden_size
        self.adapters = (
            nn.ModuleList(Bottleneck(width, cfg.bottleneck) for _ in range(k)) if cfg.adapter == "bottleneck" else None
        )

    def train(self, mode: bool = True) -> TopLayers:
        """Training mode; the BertLayers' own dropout only with ``model.top-dropout`` (their default)."""
        super().train(mode)
        if not self.dropout:
            self.layer.eval()  # (LoRA's own dropout sits inside too: peft's default rate is 0)
        return self

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # hidden (B, T, H), mask (B, T) -> (B, H)
        ext = extended_mask(mask, hidden.dtype)
        for i, layer in enumerate(self.layer):
            out = layer(hidden, attention_mask=ext)
            hidden = out[0] if isinstance(out, tuple) else out
            if self.adapters is not None:
                hidden = self.adapters[i](hidden)
        return mean_pool(hidden, mask)


class ItemTower(nn.Module):
    """Maps catalogue rows to item vectors (D) and biases, from the cached backbone prefix."""

    features: torch.Tensor  # (N, H) pooled, k = 0
    hidden: torch.Tensor  # (N, T, H) float16, k > 0
    mask: torch.Tensor  # (N, T), k > 0
    lengths: torch.Tensor  # (N,) real tokens of each row (up to its last one), k > 0

    def __init__(self, cfg: ModelConfig, cache: PrefixCache, backbone: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        n, width = cache.num_items, cache.width
        if cfg.top_layers == 0:
            assert cache.pooled is not None
            self.register_buffer("features", cache.pooled.float(), persistent=False)
            self.adapter: nn.Module = Bottleneck(width, cfg.bottleneck)
        else:
            if backbone is None:
                raise ValueError("top_layers > 0 needs the backbone module")
            assert cache.hidden is not None and cache.mask is not None
            self.register_buffer("hidden", cache.hidden, persistent=False)
            self.register_buffer("mask", cache.mask, persistent=False)
            # tokens up to the last real one (R,): what a row needs, whichever side it is padded on
            pos = torch.arange(1, cache.mask.shape[1] + 1)
            self.register_buffer("lengths", (cache.mask.bool() * pos).amax(1).clamp_min(1), persistent=False)
            self.top_dtype = top_dtype(cfg.top_precision)
            log.info(
                "top layers: k = %d, %s matmuls (model.top-precision = %s)",
                cfg.top_layers,
                self.top_dtype,
                cfg.top_precision,
            )
            self.adapter = TopLayers(backbone, cfg.top_layers, cfg)
            if cfg.adapter == "lora":
                lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS)
                inject_adapter_in_model(lcfg, self.adapter)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.id_residual = nn.Embedding(n, cfg.dim) if cfg.id_residual else None
        if self.id_residual is not None:
            nn.init.normal_(self.id_residual.weight, std=0.01)
        self.bias = nn.Embedding(n, 1)
        nn.init.zeros_(self.bias.weight)
        self.bias.weight.requires_grad_(cfg.item_bias)
        if not cfg.train_tower:  # the tower keeps its public start (model.train-tower = false)
            for m in (self.adapter, self.norm, self.proj):
                m.requires_grad_(False)

    @property
    def num_items(self) -> int:
        return int(self.bias.num_embeddings)

    def text_features(self, rows: torch.Tensor) -> torch.Tensor:
        """Adapted, pooled text features of ``rows`` (...) -> (..., H); leading dims are kept.

        With top layers, each distinct row runs once (history items and shared negatives repeat), and
        rows of similar length run together, cut to the longest of them: both exact, since a row's
        features depend on its own real tokens alone. Merges leading dims (not per-sample safe).
        """
        if self.cfg.top_layers == 0:
            return self.adapter(self.features[rows])
        uniq, inv = torch.unique(rows.reshape(-1), return_inverse=True)  # (R,), (N,)
        return self._top_features(uniq)[inv].view(*rows.shape, -1)

    def _top_features(self, rows: torch.Tensor) -> torch.Tensor:
        """Pooled top-layer features (R, H) of distinct ``rows`` (R,), batched by token length."""
        lengths = self.lengths[rows]
        order = torch.argsort(lengths, stable=True)
        bucket = torch.bucketize(lengths[order], torch.tensor(LENGTH_BUCKETS))  # length <= edge -> that bucket
        sizes = torch.bincount(bucket, minlength=len(LENGTH_BUCKETS) + 1).tolist()
        parts = []
        for chunk in torch.split(rows[order], sizes):
            if len(chunk):
                t = int(self.lengths[chunk].max())
                hidden, mask = self._prefix(chunk, min(t, self.cfg.top_tokens) if self.cfg.top_tokens else t)
                parts.append(self.run_top(hidden, mask))
        return torch.cat(parts)[torch.argsort(order)]  # back from length order to the order of ``rows``

    def run_top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The adapted top layers over prefix states (R, T, H), mask (R, T) -> pooled (R, H) float32."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.top_dtype == torch.bfloat16):
            return self.adapter(hidden, mask).float()

    def _prefix(self, rows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached hidden states (R, T, H) and mask (R, T) of ``rows``, cut to ``length`` tokens."""
        return self.hidden[rows, :length].float(), self.mask[rows, :length]

    def text_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """The text part (..., D) of the vectors of ``rows`` (...): no ID residual, not normalised."""
        return self.proj(self.drop(self.norm(self.text_features(rows))))

    def residual(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The ID residual (..., D) of ``rows`` (...), DropoutNet-dropped in training; None without one.

        In training mode each row of ``rows`` loses its residual with probability ``cfg.id_dropout``
        (one draw per entry of ``rows``: with ``Recommender(all_items=True)`` that is once per item per
        batch, shared by its history and candidate uses). A kept residual is not rescaled: a warm item
        at evaluation has its whole residual and a cold item none, the two states seen in training.
        """
        if self.id_residual is None:
            return None
        r = self.id_residual(rows)
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(rows.shape, device=r.device) >= self.cfg.id_dropout  # (...) seeded torch RNG
            r = r * keep.unsqueeze(-1).to(r.dtype)
        return r

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item vectors (..., D) and biases (...) of catalogue ``rows`` (...)."""
        v = self.text_vectors(rows)
        r = self.residual(rows)
        if r is not None:
            v = v + r
        if self.cfg.score == "cosine":
            v = F.normalize(v, dim=-1)
        return v, self.bias(rows).squeeze(-1)


class UserTower(nn.Module):
    """User vector from personal parameters (and, in ``history`` mode, the user's own history)."""

    def __init__(self, cfg: ModelConfig, num_users: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.personal = nn.Embedding(num_users, cfg.dim)
        nn.init.normal_(self.personal.weight, std=0.01)
        if not cfg.train_personal:  # model.train-personal = false: no personal vector at all
            nn.init.zeros_(self.personal.weight)
            self.personal.weight.requires_grad_(False)
        if cfg.user_mode == "history" and cfg.score == "cosine":
            # starts as the pure history summary: random personal vectors would be noise of about the
            # size of the (unit-vector mean) summary and halve the untrained model's accuracy
            nn.init.zeros_(self.personal.weight)
        if cfg.user_mode == "history":
            # recency logits: position 0 = newest history item
            self.recency = nn.Embedding(cfg.history_len, 1)
            nn.init.zeros_(self.recency.weight)
            self.mix = nn.Linear(cfg.dim, cfg.dim)
            nn.init.eye_(self.mix.weight)
            nn.init.zeros_(self.mix.bias)

    def forward(
        self, users: torch.Tensor, hist_vecs: torch.Tensor | None, hist_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Users (B,), hist_vecs (B, L, D) newest first, hist_mask (B, L) -> (B, D)."""
        u = self.personal(users)
        if self.cfg.user_mode == "history" and hist_vecs is not None and hist_mask is not None:
            pos = torch.arange(hist_vecs.shape[1], device=hist_vecs.device)
            logits = self.recency(pos).squeeze(-1).expand_as(hist_mask)  # (B, L)
            logits = logits.masked_fill(~hist_mask, float("-inf"))
            w = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # empty history -> zeros
            u = u + self.mix(torch.einsum("bl,bld->bd", w, hist_vecs))
        if self.cfg.score == "cosine" and self.cfg.user_mode == "history":
            return F.normalize(u, dim=-1)
        # personal mode (record-level DP): the raw personal vector, whose length sets the logit scale.
        # Normalising it would make a fresh (random) vector a unit-length one that swamps the history
        # summary the device adds at evaluation; small at the start, it leaves that ranking to the history.
        return u


class Recommender(nn.Module):
    """Item tower + user tower; ``score`` is a dot product plus an item bias."""

    def __init__(self, cfg: ModelConfig, cache: PrefixCache, num_users: int, backbone: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = ItemTower(cfg, cache, backbone)
        self.user = UserTower(cfg, num_users)
        if cfg.score == "dot":
            self.scale = nn.Parameter(torch.ones(()))  # learnable logit scale (shared)
        else:  # cosine: a fixed scale (the loss temperature sets the logit range)
            self.register_buffer("scale", torch.ones(()))

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """Users (B,), history (B, L) catalogue rows newest first, -1 padded -> (B, D)."""
        if self.cfg.user_mode != "history" or history is None:
            return self.user(users, None, None)
        vecs, _ = self.items(history.clamp_min(0))  # (B, L, D)
        return self.user(users, vecs, history >= 0)

    def user_from_vectors(
        self, users: torch.Tensor, history: torch.Tensor | None, item_vectors: torch.Tensor
    ) -> torch.Tensor:
        """User vectors (B, D) from already computed item vectors (N, D) and history rows (B, L)."""
        if self.cfg.user_mode == "history" and history is not None:
            return self.user(users, item_vectors[history.clamp_min(0)], history >= 0)
        return self.user(users, None, None)

    def forward(
        self, users: torch.Tensor, history: torch.Tensor | None, candidates: torch.Tensor, *, all_items: bool = False
    ) -> torch.Tensor:
        """Scores (B, C) of candidate rows (B, C) for users (B,) with their histories (B, L).

        ``all_items`` computes every item vector once and gathers (fast, but not per-sample: never
        under DP-SGD, whose per-sample gradients need every module's input to be batch-first). With top
        layers (k > 0, never under DP-SGD: :func:`shared.config.check_dp_model`) the vectors of the
        distinct rows of history and candidates are computed once and gathered (without ``all_items``).
        """
        if all_items:
            v_all, b_all = self.items(torch.arange(self.items.num_items))
            u = self.user_from_vectors(users, history, v_all)
            v, b = v_all[candidates], b_all[candidates]
        elif self.cfg.top_layers > 0:  # the top layers run once per distinct row of history and candidates
            hist = history if self.cfg.user_mode == "history" and history is not None else None
            touched = candidates.reshape(-1) if hist is None else torch.cat([candidates.reshape(-1), hist.reshape(-1)])
            rows, where = torch.unique(touched.clamp_min(0), return_inverse=True)
            v_rows, b_rows = self.items(rows)  # (R, D), (R,)
            c = where[: candidates.numel()].view_as(candidates)
            if hist is None:
                u = self.user(users, None, None)
            else:
                h = where[candidates.numel() :].view_as(hist)
                u = self.user(users, v_rows[h], hist >= 0)
            v, b = v_rows[c], b_rows[c]
        else:
            u = self.user_vectors(users, history)
            v, b = self.items(candidates)  # (B, C, D), (B, C): batch-first for per-sample gradients
        return self.scale * torch.einsum("bd,bcd->bc", u, v) + b

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Trainable parameters that are uploaded and aggregated (everything but personal ones)."""
        return {
            n: p.detach() for n, p in self.named_parameters() if p.requires_grad and not n.startswith(PERSONAL_PREFIXES)
        }

    def public_state(self) -> dict[str, torch.Tensor]:
        """Every parameter but the personal ones, trained or frozen (what a checkpoint must hold)."""
        return {n: p.detach() for n, p in self.named_parameters() if not n.startswith(PERSONAL_PREFIXES)}

    def personal_state(self) -> dict[str, torch.Tensor]:
        """Parameters that never leave the device."""
        return {n: p.detach() for n, p in self.named_parameters() if n.startswith(PERSONAL_PREFIXES)}

    def load_partial(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` into the named parameters (shapes must match)."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                if n not in params:
                    raise KeyError(f"unknown parameter {n!r}")
                if params[n].shape != t.shape:
                    raise ValueError(f"parameter {n!r}: shape {tuple(t.shape)} != {tuple(params[n].shape)}")
                params[n].copy_(t)

    @torch.no_grad()
    def all_item_vectors(self, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors (N, D) and biases (N,) of every catalogue item (eval mode)."""
        was = self.training
        self.eval()
        rows = torch.arange(self.items.num_items)
        out = [self.items(rows[s : s + batch]) for s in range(0, len(rows), batch)]
        self.train(was)
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


@torch.no_grad()
def pca_init_projection(model: Recommender) -> None:
    """Initialise the item projection from the principal directions of the catalogue's text features.

    The features are the (public) catalogue's normalised text features, so the untrained model
    already ranks by content similarity.

    Only for ``top_layers = 0`` (the adapter starts as the identity, so the projection's input is
    ``norm(features)``); uses the catalogue texts alone, never interactions.
    """
    tower = model.items
    if tower.cfg.top_layers != 0:
        raise ValueError("PCA initialisation needs model.top-layers = 0 (pooled features)")
    x = tower.norm(tower.adapter(tower.features))  # (N, H)
    mean = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    d = tower.proj.out_features
    w = vt[:d]  # (D, H), rows orthonormal; when H < D the rest stays random
    tower.proj.weight[: len(w)] = w
    tower.proj.bias[: len(w)] = -(w @ mean)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]
