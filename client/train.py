"""Local training (plain or Opacus DP-SGD) and on-device P1 evaluation for one node.

Under record-level DP the model's user side is the personal vector only, so each sample's loss
depends on that one interaction (DESIGN 4a), and the personal vector is trained by the same DP
optimizer as the shared parameters (DESIGN 4b).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.config import LocalConfig, PrivacyConfig
from client.data import NodeData
from client.privacy import NodePrivacy, node_delta
from shared.config import ModelConfig, TrainConfig
from shared.errors import ConfigError
from shared.metrics import rank_of_target
from shared.model import PERSONAL_PREFIXES, Recommender
from shared.training import Sequences, eval_histories, make_batch, sample_losses

log = logging.getLogger(__name__)


@dataclass
class LocalResult:
    """What one round of local training produced."""

    loss: float
    num_examples: int
    steps: int
    epsilon: float = 0.0
    delta: float = 0.0
    noise_multiplier: float = 0.0


def build_model(mcfg: ModelConfig, data: NodeData, seed: int = 0) -> Recommender:
    """A fresh model for this node (its personal table has one row per local user)."""
    torch.manual_seed(seed)
    return Recommender(mcfg, data.cache, data.num_users, data.backbone)


def shared_names(model: Recommender) -> list[str]:
    """Names of the uploaded parameters (fixed by the architecture, not by what is trainable now)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(PERSONAL_PREFIXES)]


def _param_groups(model: nn.Module, lcfg: LocalConfig) -> list[dict[str, object]]:
    shared = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(PERSONAL_PREFIXES)]
    personal = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(PERSONAL_PREFIXES)]
    return [{"params": shared}, {"params": personal, "lr": lcfg.lr * lcfg.personal_lr_scale}]


def _optimizer(model: nn.Module, lcfg: LocalConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, lcfg)
    if lcfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lcfg.lr)  # type: ignore[arg-type]
    return torch.optim.Adam(groups, lr=lcfg.lr)  # type: ignore[arg-type]


@torch.no_grad()
def _proximal_pull(model: nn.Module, anchor: dict[str, torch.Tensor], mu: float, lr: float) -> None:
    """FedProx as a decoupled proximal step: w -= lr * mu * (w - w_global) on the shared parameters.

    Under DP this is post-processing (it only uses the DP iterate and the public global model).
    """
    if mu <= 0:
        return
    for n, p in model.named_parameters():
        if n in anchor:
            p.sub_(lr * mu * (p - anchor[n]))


def _subset_scores(model: Recommender, users: np.ndarray, hist: np.ndarray | None, cand: np.ndarray) -> torch.Tensor:
    """Scores (B, C) computing item vectors only for the rows a batch touches (not per-sample safe)."""
    rows = np.unique(np.concatenate([cand.ravel(), hist[hist >= 0] if hist is not None else cand[:0, 0]]))
    where = np.full(model.items.num_items, -1, np.int64)
    where[rows] = np.arange(len(rows))
    v, b = model.items(torch.as_tensor(rows))  # (R, D), (R,)
    u_ids = torch.as_tensor(users)
    if hist is not None and model.cfg.user_mode == "history":
        h = torch.as_tensor(where[np.clip(hist, 0, None)])
        u = model.user(u_ids, v[h], torch.as_tensor(hist >= 0))
    else:
        u = model.user(u_ids, None, None)
    c = torch.as_tensor(where[cand])
    return model.scale * torch.einsum("bd,bcd->bc", u, v[c]) + b[c]


def train_plain(
    model: Recommender,
    data: NodeData,
    *,
    lcfg: LocalConfig,
    tcfg: TrainConfig,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
) -> LocalResult:
    """Non-private local training (``history`` mode: each sample reads the user's earlier items)."""
    seqs = Sequences.from_lists(data.split.train)
    users, steps = seqs.samples()
    anchor = {k: v.clone() for k, v in model.shared_state().items()}
    opt = _optimizer(model, lcfg)
    hist_len = model.cfg.history_len if model.cfg.user_mode == "history" else None
    model.train()
    total, n, nsteps = 0.0, 0, 0
    for _ in range(lcfg.epochs):
        order = rng.permutation(len(users))
        for s in range(0, len(order), lcfg.batch_size):
            idx = order[s : s + lcfg.batch_size]
            pos = seqs.targets(users[idx], steps[idx])
            neg = rng.integers(0, data.num_items, size=tcfg.negatives)  # shared by the batch (not under DP)
            cand = np.concatenate([pos[:, None], np.broadcast_to(neg, (len(idx), len(neg)))], axis=1)
            hist = seqs.history(users[idx], steps[idx], hist_len) if hist_len is not None else None
            scores = _subset_scores(model, users[idx], hist, cand)
            loss = sample_losses(scores, tcfg.loss, tcfg.temperature).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _proximal_pull(model, anchor, proximal_mu, lcfg.lr)
            total += float(loss.detach()) * len(idx)
            n += len(idx)
            nsteps += 1
    return LocalResult(total / max(n, 1), len(users), nsteps)


def _secure_engine(secure: bool) -> PrivacyEngine:
    if secure:
        try:
            import torchcsprng  # noqa: F401
        except ImportError:
            raise ConfigError(
                "dp.secure-rng", "needs the torchcsprng package (cryptographically secure noise and sampling)"
            ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PrivacyEngine(accountant="rdp", secure_mode=secure)


def _noise_only_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """An empty Poisson batch: no sample contributes, but the step still adds noise (and is accounted)."""
    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)  # type: ignore[attr-defined]
    optimizer.step()


def train_dp(
    model: Recommender,
    data: NodeData,
    privacy: NodePrivacy,
    *,
    lcfg: LocalConfig,
    tcfg: TrainConfig,
    pcfg: PrivacyConfig,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
) -> LocalResult:
    """DP-SGD with Opacus: Poisson sampling, per-sample clipping, Gaussian noise.

    ``privacy`` holds the accountant history from earlier rounds and is updated in place, so the
    returned ε covers every step this node has ever taken.
    """
    if model.cfg.user_mode != "personal":
        raise ConfigError("model.user-mode", "record-level DP needs the personal user mode (DESIGN 4a)")
    seqs = Sequences.from_lists(data.split.train)
    users, steps = seqs.samples()
    n = len(users)
    delta = node_delta(pcfg, n)
    anchor = {k: v.clone() for k, v in model.shared_state().items()}
    # a bare parameter on the top module has no per-sample gradient rule: keep the shared logit
    # scale fixed on the device under DP (it is still uploaded, unchanged)
    scale_trained = model.scale.requires_grad
    model.scale.requires_grad_(False)
    opt = _optimizer(model, lcfg)
    engine = _secure_engine(pcfg.secure_rng)
    engine.accountant.history = list(privacy.history)
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=lcfg.batch_size)
    gen = None if pcfg.secure_rng else torch.Generator().manual_seed(int(rng.integers(2**31)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm, dp_opt, dp_loader = engine.make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=pcfg.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode="hooks",
            noise_generator=gen,
        )
    if gen is not None:
        dp_loader.batch_sampler.generator = gen  # type: ignore[union-attr]
    params = [p for p in gsm.parameters() if p.requires_grad]
    gsm.train()
    total, seen, nsteps = 0.0, 0, 0
    try:
        for _ in range(lcfg.epochs):
            for (idx_t,) in dp_loader:
                idx = idx_t.numpy()
                dp_opt.zero_grad(set_to_none=True)
                if len(idx) == 0:
                    _noise_only_step(dp_opt, params)
                else:
                    b = make_batch(
                        seqs,
                        users[idx],
                        steps[idx],
                        history_len=None,
                        negatives=tcfg.negatives,
                        num_items=data.num_items,
                        rng=rng,
                    )
                    scores = gsm(b["users"], None, b["candidates"])  # per-sample safe path (all_items=False)
                    per = sample_losses(scores, tcfg.loss, tcfg.temperature)
                    per.mean().backward()
                    dp_opt.step()
                    total += float(per.detach().sum())
                    seen += len(idx)
                _proximal_pull(model, anchor, proximal_mu, lcfg.lr)
                nsteps += 1
    finally:
        gsm._close()
        model.scale.requires_grad_(scale_trained)
    privacy.history = [tuple(h) for h in engine.accountant.history]  # type: ignore[misc]
    eps = privacy.epsilon(delta)
    return LocalResult(total / max(seen, 1), n, nsteps, eps, delta, privacy.noise_multiplier)


@torch.no_grad()
def heldout_ranks(model: Recommender, data: NodeData, which: str, *, use_history: bool) -> np.ndarray:
    """0-based rank of each local user's held-out item among its 99 negatives (P1), on the device.

    ``use_history`` adds the user's own history summary to the personal vector: in ``history`` mode
    through the model's shared map; in ``personal`` (DP) mode as a plain mean of the history item
    vectors (post-processing of the DP model with the device's own data; nothing leaves the device).
    """
    split = data.split
    target = split.val if which == "val" else split.test
    negs = split.val_negatives if which == "val" else split.test_negatives
    keep = np.flatnonzero(target >= 0)
    if not len(keep):
        return np.zeros(0, np.int64)
    model.eval()
    cand_np = np.concatenate([target[keep][:, None], negs[keep]], axis=1)
    hist_np = eval_histories(split, which, model.cfg.history_len, keep)
    rows = np.unique(np.concatenate([cand_np.ravel(), hist_np[hist_np >= 0]]))
    where = np.full(model.items.num_items, -1, np.int64)
    where[rows] = np.arange(len(rows))
    v, b = model.items(torch.as_tensor(rows))  # only the rows this node ranks or reads
    users = torch.as_tensor(keep)
    cand = torch.as_tensor(where[cand_np])
    hist = torch.as_tensor(where[np.clip(hist_np, 0, None)])
    mask = torch.as_tensor(hist_np >= 0)
    if model.cfg.user_mode == "history":
        u = model.user(users, v[hist], mask) if use_history else model.user(users, None, None)
    else:
        u = model.user(users, None, None)
        if use_history:
            w = mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1.0)
            u = u + torch.einsum("bl,bld->bd", w, v[hist])
    scores = model.scale * torch.einsum("bd,bcd->bc", u, v[cand]) + b[cand]
    return rank_of_target(scores.numpy(), 0)


def evaluate_node(model: Recommender, data: NodeData, *, use_history: bool, k: int = 10) -> dict[str, float]:
    """HR@k / NDCG@k sums and counts on this node's validation and test items (nothing else)."""
    out: dict[str, float] = {}
    for which in ("val", "test"):
        r = heldout_ranks(model, data, which, use_history=use_history)
        hit = r < k
        out[f"{which}-hits"] = float(hit.sum())
        out[f"{which}-ndcg"] = float((hit / np.log2(r + 2.0)).sum())
        out[f"{which}-count"] = float(len(r))
    return out
