"""Local training (plain or Opacus DP-SGD) and on-device P1 evaluation for one node.

Under record-level DP the model's user side is the personal vector only, so each sample's loss
depends on that one interaction (DESIGN 4a), and the personal vector is trained by the same DP
optimizer as the shared parameters (DESIGN 4b).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from torch import nn

from client.config import LocalConfig, PrivacyConfig
from client.data import NodeData
from client.privacy import Entry, NodePrivacy, max_examples, secure_seed
from shared.config import ModelConfig, TrainConfig
from shared.errors import ConfigError
from shared.metrics import rank_of_target
from shared.model import PERSONAL_PREFIXES, Recommender
from shared.splits import Split
from shared.training import (
    Sequences,
    eval_histories,
    make_batch,
    sample_losses,
    sample_negatives,
    session_losses,
    sessions,
)

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


def local_optimizer(model: nn.Module, lcfg: LocalConfig) -> torch.optim.Optimizer:
    """The node's local optimiser (``local.optimizer``; personal parameters at a scaled lr)."""
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


def plain_batch(
    seqs: Sequences,
    users: np.ndarray,
    steps: np.ndarray,
    *,
    history_len: int | None,
    negatives: int,
    num_items: int,
    rng: np.random.Generator,
    pool: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One non-private batch: candidates (B, 1 + M) and the history (B, L) before each sample.

    Each row of candidates is the sample's target, then ``M`` negatives shared by the batch, uniform
    over the catalogue or over ``pool`` (:meth:`Split.negative_pool`); the history is ``None`` without
    ``history_len``.
    """
    pos = seqs.targets(users, steps)
    neg = sample_negatives(rng, (negatives,), num_items, pool)  # shared by the batch (not under DP)
    cand = np.concatenate([pos[:, None], np.broadcast_to(neg, (len(users), len(neg)))], axis=1)
    hist = seqs.history(users, steps, history_len) if history_len is not None else None
    return cand, hist


def subset_scores(model: Recommender, users: np.ndarray, hist: np.ndarray | None, cand: np.ndarray) -> torch.Tensor:
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
    opt = local_optimizer(model, lcfg)
    hist_len = model.cfg.history_len if model.cfg.user_mode == "history" else None
    pool = data.split.negative_pool()
    model.train()
    total, n, nsteps = 0.0, 0, 0
    batches = [
        order[s : s + lcfg.batch_size]
        for order in (rng.permutation(len(users)) for _ in range(lcfg.epochs))
        for s in range(0, len(order), lcfg.batch_size)
    ]
    if lcfg.max_steps:
        batches = batches[: lcfg.max_steps]
    used = len(np.unique(np.concatenate(batches))) if batches else 0
    for idx in batches:
        cand, hist = plain_batch(
            seqs,
            users[idx],
            steps[idx],
            history_len=hist_len,
            negatives=tcfg.negatives,
            num_items=data.num_items,
            rng=rng,
            pool=pool,
        )
        scores = subset_scores(model, users[idx], hist, cand)
        loss = sample_losses(scores, tcfg.loss, tcfg.temperature).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _proximal_pull(model, anchor, proximal_mu, lcfg.lr)
        total += float(loss.detach()) * len(idx)
        n += len(idx)
        nsteps += 1
    return LocalResult(total / max(n, 1), used, nsteps)


def _groups(model: nn.Module, pcfg: PrivacyConfig) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by clipping group: ``shared``, ``personal`` and ``bias``.

    A group without a norm of its own is clipped with ``shared``.
    """
    norms = pcfg.clip_norms()
    out: dict[str, list[nn.Parameter]] = {"shared": [], "personal": [], "bias": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = "personal" if n.startswith(PERSONAL_PREFIXES) else "bias" if n == "items.bias.weight" else "shared"
        out[g if norms[g] > 0 else "shared"].append(p)
    return {g: ps for g, ps in out.items() if ps}


def _clipped_sum(groups: dict[str, list[nn.Parameter]], norms: dict[str, float]) -> None:
    """Replace each ``p.grad_sample`` (B, ...) by the sum of per-sample gradients clipped group by group.

    Sample b's gradient in group g is scaled by min(1, C_g / ||g_b||), so one sample moves the sum by
    at most sqrt(sum_g C_g^2) (:meth:`PrivacyConfig.total_clip`). An empty batch gives zeros.
    """
    for g, ps in groups.items():
        gs = [p.grad_sample for p in ps]  # type: ignore[attr-defined]
        b = gs[0].shape[0]
        if b == 0:
            for p in ps:
                p.grad = torch.zeros_like(p)
            continue
        sq = torch.stack([x.reshape(b, -1).pow(2).sum(1) for x in gs]).sum(0)  # (B,)
        factor = (norms[g] / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p, x in zip(ps, gs, strict=True):
            p.grad = torch.einsum("b,b...->...", factor, x)


def _add_noise(params: list[nn.Parameter], std: float, gen: torch.Generator) -> None:
    for p in params:
        assert p.grad is not None
        p.grad.add_(torch.normal(0.0, std, size=p.shape, generator=gen))


def dp_generators(test_seed: int | None) -> tuple[torch.Generator, np.random.Generator]:
    """The round's private randomness (noise and Poisson sampling; negatives): OS entropy, or a test seed."""
    seed = secure_seed() if test_seed is None else int(test_seed)
    return torch.Generator().manual_seed(seed), np.random.default_rng(seed)


@dataclass
class DPSamples:
    """A device's DP samples: interactions (``dp.sample = interaction``) or sessions (``session``)."""

    seqs: Sequences
    users: np.ndarray  # (S,) interaction samples: user position
    steps: np.ndarray  # (S,) and time step
    sessions: np.ndarray | None = None  # (S, cap) session samples, -1 padded
    session_owner: np.ndarray | None = None  # (S,) user position of each session
    pool: np.ndarray | None = None  # rows negatives are drawn from (None: all; Split.negative_pool)

    def owners(self) -> np.ndarray:
        """The user position of every sample (S,)."""
        return self.session_owner if self.session_owner is not None else self.users

    def __len__(self) -> int:
        return len(self.sessions) if self.sessions is not None else len(self.users)

    def losses(
        self,
        model: Recommender,
        gsm: nn.Module,
        idx: np.ndarray,
        *,
        tcfg: TrainConfig,
        num_items: int,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """Per-sample losses (B,) of samples ``idx``, through the per-sample-gradient module ``gsm``."""
        if self.sessions is not None:
            neg = torch.as_tensor(sample_negatives(rng, (len(idx), tcfg.negatives), num_items, self.pool))
            return session_losses(model, torch.as_tensor(self.sessions[idx]), neg, tcfg.temperature)
        b = make_batch(
            self.seqs,
            self.users[idx],
            self.steps[idx],
            history_len=None,
            negatives=tcfg.negatives,
            num_items=num_items,
            rng=rng,
            pool=self.pool,
        )
        return sample_losses(gsm(b["users"], None, b["candidates"]), tcfg.loss, tcfg.temperature)


def dp_samples(split: Split, pcfg: PrivacyConfig, *, one_device_per_user: bool = False) -> DPSamples:
    """The samples a DP device trains on, from at most 1/(10·δ) interactions (its newest ones).

    ``one_device_per_user``: every user of ``split`` is a device of its own (the union simulation),
    so the cap applies to each user.
    """
    cap = max_examples(pcfg.delta)
    lists, ts_lists = list(split.train), list(split.train_ts)
    total = sum(len(x) for x in lists)
    if one_device_per_user:
        lists = [x[len(x) - min(len(x), cap) :] for x in lists]
        ts_lists = [np.asarray(t)[len(t) - min(len(t), cap) :] for t in ts_lists]
    elif total > cap:  # keep the newest cap interactions (each user's list is in time order)
        keep_flat = np.zeros(total, bool)
        keep_flat[np.argsort(np.concatenate(ts_lists), kind="stable")[total - cap :]] = True
        bounds = np.cumsum([0, *[len(x) for x in lists]])
        keep = [keep_flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        lists = [x[k] for x, k in zip(lists, keep, strict=True)]
        ts_lists = [np.asarray(t)[k] for t, k in zip(ts_lists, keep, strict=True)]
    seqs = Sequences.from_lists(lists)
    users, steps = seqs.samples()
    pool = split.negative_pool()
    if pcfg.sample == "session":
        rows, owner = sessions(lists, ts_lists, seconds=pcfg.session_seconds, cap=pcfg.session_cap)
        return DPSamples(seqs, users, steps, rows, owner, pool=pool)
    return DPSamples(seqs, users, steps, pool=pool)


def _per_sample_grads(
    model: Recommender,
    gsm: GradSampleModule,
    samples: DPSamples,
    idx: np.ndarray,
    *,
    tcfg: TrainConfig,
    num_items: int,
    rng: np.random.Generator,
) -> float:
    """Forward and backward of one Poisson batch; fills ``grad_sample``; returns the summed loss."""
    per = samples.losses(model, gsm, idx, tcfg=tcfg, num_items=num_items, rng=rng)
    per.sum().backward()
    return float(per.detach().sum())


def _empty_grad_samples(params: list[nn.Parameter]) -> None:
    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)  # type: ignore[attr-defined]


@dataclass
class _PrivateRound:
    """A device's DP round in progress: its samples, clipping groups, per-sample module and private randomness."""

    model: Recommender
    gsm: GradSampleModule
    groups: dict[str, list[nn.Parameter]]
    samples: DPSamples
    pcfg: PrivacyConfig
    gen: torch.Generator
    rng: np.random.Generator
    num_items: int

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for ps in self.groups.values() for p in ps]

    def clipped_sum(self, tcfg: TrainConfig) -> tuple[float, int]:
        """One Poisson batch at ``dp.sample-rate``; leaves its clipped per-sample gradient sum in ``p.grad``.

        An empty batch leaves zeros (a noise-only step once the caller adds the noise). Returns the
        summed loss and the batch size (device-side only: never sent).
        """
        pick = np.flatnonzero(torch.rand(len(self.samples), generator=self.gen).numpy() < self.pcfg.sample_rate)
        self.model.zero_grad(set_to_none=True)
        loss = 0.0
        if len(pick):
            loss = _per_sample_grads(
                self.model, self.gsm, self.samples, pick, tcfg=tcfg, num_items=self.num_items, rng=self.rng
            )
        else:
            _empty_grad_samples(self.params)
        _clipped_sum(self.groups, self.pcfg.clip_norms())
        for p in self.params:
            p.grad_sample = None  # type: ignore[attr-defined]
        return loss, len(pick)


@contextmanager
def _private_round(
    model: Recommender, data: NodeData, pcfg: PrivacyConfig, test_seed: int | None
) -> Iterator[_PrivateRound]:
    """Set up a DP round (and undo it after): personal user mode checked, logit scale fixed, hooks on."""
    if model.cfg.user_mode != "personal":
        raise ConfigError("model.user-mode", "record-level DP needs the personal user mode (DESIGN 4a)")
    gen, rng = dp_generators(test_seed)
    samples = dp_samples(data.split, pcfg)
    # a bare parameter on the top module has no per-sample gradient rule: the shared logit scale stays
    # fixed on the device under DP (it is still uploaded, unchanged)
    scale_trained = model.scale.requires_grad
    model.scale.requires_grad_(False)
    groups = _groups(model, pcfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    gsm.train()
    try:
        yield _PrivateRound(model, gsm, groups, samples, pcfg, gen, rng, data.num_items)
    finally:
        gsm._close()
        model.scale.requires_grad_(scale_trained)


def train_dp(
    model: Recommender,
    data: NodeData,
    privacy: NodePrivacy,
    *,
    lcfg: LocalConfig,
    tcfg: TrainConfig,
    pcfg: PrivacyConfig,
    proximal_mu: float = 0.0,
    test_seed: int | None = None,
) -> LocalResult:
    """Local DP-SGD: Poisson sampling at the public rate, per-sample clipping by group, Gaussian noise.

    Each of the round's ``dp.local-steps`` steps samples every interaction with probability
    ``dp.sample-rate``, sums the clipped per-sample gradients, adds N(0, (σ·C)²) to every coordinate
    (C = :meth:`PrivacyConfig.total_clip`) and divides by the public ``dp.expected-batch``. An empty
    batch is a noise-only step. Noise, sampling and negatives come from OS entropy (``test_seed``: tests
    only). ``privacy.history`` gains one entry per step, so ε covers every step this device took.
    """
    anchor = {k: v.clone() for k, v in model.shared_state().items()}
    std = privacy.noise_multiplier * pcfg.total_clip()
    total, seen = 0.0, 0
    nsteps = pcfg.steps_per_round()
    with _private_round(model, data, pcfg, test_seed) as rnd:
        opt = local_optimizer(model, lcfg)  # after the logit scale is fixed: it is not among the parameters
        for _ in range(nsteps):
            loss, n = rnd.clipped_sum(tcfg)
            total, seen = total + loss, seen + n
            _add_noise(rnd.params, std, rnd.gen)
            for p in rnd.params:
                assert p.grad is not None
                p.grad.div_(pcfg.expected_batch)
            opt.step()
            privacy.history.append((privacy.noise_multiplier, pcfg.sample_rate, 1, pcfg.group()))
            _proximal_pull(model, anchor, proximal_mu, lcfg.lr)
        num_examples = len(rnd.samples.users)
    privacy.history = _compact(privacy.history)
    eps = privacy.epsilon(pcfg.delta)
    return LocalResult(total / max(seen, 1), num_examples, nsteps, eps, pcfg.delta, privacy.noise_multiplier)


def dp_share(
    model: Recommender,
    data: NodeData,
    privacy: NodePrivacy,
    *,
    tcfg: TrainConfig,
    pcfg: PrivacyConfig,
    personal_lr: float,
    test_seed: int | None = None,
) -> dict[str, np.ndarray]:
    """One round of distributed DP-SGD on a device: its share of one central step (``dp.mode = distributed``).

    The device Poisson-samples its interactions at ``dp.sample-rate``, sums their per-sample clipped
    gradients and adds N(0, (σ·C)² / ``dp.min-shares``) to the shared coordinates. The secure sum of at
    least ``dp.min-shares`` such shares (SecAgg+) carries the whole noise N(0, (σ·C)²) or more: exactly one
    central DP-SGD step over the union of the cohort's batches. The personal vector's coordinates get no
    other device's share, so the device adds the whole noise to them itself and takes their step here.
    Returns the shared parameters' noisy gradient sums (never valid alone: only inside the secure sum).
    """
    std = privacy.noise_multiplier * pcfg.total_clip()
    names = {id(p): n for n, p in model.named_parameters()}
    share: dict[str, np.ndarray] = {}
    with _private_round(model, data, pcfg, test_seed) as rnd:
        rnd.clipped_sum(tcfg)
        with torch.no_grad():
            for p in rnd.params:
                assert p.grad is not None
                n = names[id(p)]
                if n.startswith(PERSONAL_PREFIXES):  # only this device contributes: the whole noise
                    p.grad.add_(torch.normal(0.0, std, size=p.shape, generator=rnd.gen))
                    p.sub_(personal_lr * p.grad / pcfg.expected_batch)
                else:
                    noise = torch.normal(0.0, std / float(np.sqrt(pcfg.min_shares)), size=p.shape, generator=rnd.gen)
                    share[n] = (p.grad + noise).numpy().astype(np.float32)
    privacy.history = _compact([*privacy.history, (privacy.noise_multiplier, pcfg.sample_rate, 1, pcfg.group())])
    return share


def _compact(history: list[Entry]) -> list[Entry]:
    """Merge consecutive accountant entries with the same (σ, q, group) (RDP composes linearly in steps)."""
    out: list[Entry] = []
    for sigma, q, k, g in history:
        if out and out[-1][0] == sigma and out[-1][1] == q and out[-1][3] == g:
            out[-1] = (sigma, q, out[-1][2] + k, g)
        else:
            out.append((sigma, q, k, g))
    return out


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
