"""Training and evaluation loops shared by the central reference run and the federated clients.

A training sample is one interaction: (user, its position ``t`` in the user's time-ordered training
sequence). In ``history`` mode its input is the ``L`` items before ``t`` (newest first); in
``personal`` mode it has no history input, so its loss depends on that interaction alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shared.config import TrainConfig
from shared.metrics import hit_rate, mrr, ndcg, ndcg_at_k, rank_of_target, recall_at_k
from shared.model import Recommender
from shared.splits import Split

log = logging.getLogger(__name__)


@dataclass
class Sequences:
    """Users' time-ordered item rows as one padded matrix (U, maxlen), -1 padded."""

    seqs: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_lists(cls, lists: list[np.ndarray]) -> Sequences:
        lengths = np.array([len(x) for x in lists], np.int64)
        seqs = np.full((len(lists), max(1, int(lengths.max(initial=1)))), -1, np.int64)
        for i, x in enumerate(lists):
            seqs[i, : len(x)] = x
        return cls(seqs, lengths)

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """All (user position, time step) pairs."""
        users = np.repeat(np.arange(len(self.lengths)), self.lengths)
        steps = np.concatenate([np.arange(n) for n in self.lengths]) if len(users) else np.zeros(0, np.int64)
        return users, steps

    def history(self, users: np.ndarray, steps: np.ndarray, length: int) -> np.ndarray:
        """The ``length`` items before each step, newest first, -1 padded: (B, length)."""
        idx = steps[:, None] - 1 - np.arange(length)[None, :]
        valid = idx >= 0
        hist = self.seqs[users[:, None], np.clip(idx, 0, None)]
        return np.where(valid, hist, -1)

    def targets(self, users: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return self.seqs[users, steps]


def sample_negatives(
    rng: np.random.Generator, shape: tuple[int, ...], num_items: int, pool: np.ndarray | None = None
) -> np.ndarray:
    """Uniform negatives over the catalogue (or over ``pool``)."""
    if pool is None:
        return rng.integers(0, num_items, size=shape)
    return pool[rng.integers(0, len(pool), size=shape)]


def sample_losses(scores: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Per-sample losses (B,) from candidate scores (B, 1 + M) whose column 0 is the positive."""
    if kind == "softmax":
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores / temperature, target, reduction="none")
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    per = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    return per[:, 0] + per[:, 1:].mean(dim=1)


def make_batch(
    seqs: Sequences,
    users: np.ndarray,
    steps: np.ndarray,
    *,
    history_len: int | None,
    negatives: int,
    num_items: int,
    rng: np.random.Generator,
    user_ids: np.ndarray | None = None,
    pool: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors for one batch: users (B,), history (B, L) or absent, candidates (B, 1 + M)."""
    pos = seqs.targets(users, steps)
    neg = sample_negatives(rng, (len(users), negatives), num_items, pool)
    batch = {
        "users": torch.as_tensor(user_ids[users] if user_ids is not None else users),
        "candidates": torch.as_tensor(np.concatenate([pos[:, None], neg], axis=1)),
    }
    if history_len is not None:
        batch["history"] = torch.as_tensor(seqs.history(users, steps, history_len))
    return batch


def train_epoch(
    model: Recommender,
    opt: torch.optim.Optimizer,
    seqs: Sequences,
    tcfg: TrainConfig,
    rng: np.random.Generator,
    pool: np.ndarray | None = None,
) -> float:
    """One pass over every training interaction (non-private, central); returns the mean loss."""
    model.train()
    users, steps = seqs.samples()
    order = rng.permutation(len(users))
    hist_len = model.cfg.history_len if model.cfg.user_mode == "history" else None
    total, n = 0.0, 0
    for s in range(0, len(order), tcfg.batch_size):
        idx = order[s : s + tcfg.batch_size]
        b = make_batch(
            seqs,
            users[idx],
            steps[idx],
            history_len=hist_len,
            negatives=tcfg.negatives,
            num_items=model.items.num_items,
            rng=rng,
            pool=pool,
        )
        scores = model(b["users"], b.get("history"), b["candidates"], all_items=True)
        loss = sample_losses(scores, tcfg.loss, tcfg.temperature).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        n += len(idx)
    return total / max(n, 1)


def eval_histories(split: Split, which: str, history_len: int, positions: np.ndarray | None = None) -> np.ndarray:
    """Input histories for ranking: training items, plus the validation item when ranking test."""
    pos = np.arange(split.num_users) if positions is None else positions
    lists = []
    for u in pos.tolist():
        h = split.train[u]
        if which == "test" and split.val[u] >= 0:
            h = np.append(h, split.val[u])
        lists.append(h)
    seqs = Sequences.from_lists(lists)
    return seqs.history(np.arange(len(lists)), seqs.lengths, history_len)


@torch.no_grad()
def score_candidates(
    model: Recommender, users: torch.Tensor, history: torch.Tensor | None, candidates: torch.Tensor, batch: int = 512
) -> np.ndarray:
    """Scores (B, C) in eval mode, using item vectors computed once."""
    model.eval()
    v, b = model.all_item_vectors()
    out = []
    for s in range(0, len(users), batch):
        h = history[s : s + batch] if history is not None else None
        u = model.user_from_vectors(users[s : s + batch], h, v)
        c = candidates[s : s + batch]
        out.append((model.scale * torch.einsum("bd,bcd->bc", u, v[c]) + b[c]).numpy())
    return np.concatenate(out) if out else np.zeros((0, candidates.shape[1]))


def p1_ranks(
    model: Recommender,
    split: Split,
    which: str,
    positions: np.ndarray | None = None,
    user_ids: np.ndarray | None = None,
) -> np.ndarray:
    """0-based rank of each user's held-out item among it and its 99 negatives (P1)."""
    pos = np.arange(split.num_users) if positions is None else positions
    target = split.val if which == "val" else split.test
    negs = split.val_negatives if which == "val" else split.test_negatives
    keep = pos[target[pos] >= 0]
    if not len(keep):
        return np.zeros(0, np.int64)
    cand = np.concatenate([target[keep][:, None], negs[keep]], axis=1)
    hist = eval_histories(split, which, model.cfg.history_len, keep)
    users = user_ids[keep] if user_ids is not None else keep
    scores = score_candidates(model, torch.as_tensor(users), torch.as_tensor(hist), torch.as_tensor(cand))
    return rank_of_target(scores, 0)


def p1_metrics(ranks: np.ndarray) -> dict[str, float]:
    return {"hr@10": hit_rate(ranks, 10), "ndcg@10": ndcg(ranks, 10), "mrr": mrr(ranks), "n": float(len(ranks))}


@torch.no_grad()
def full_ranking(model: Recommender, split: Split, which: str = "test", k: int = 20) -> dict[str, float]:
    """Recall@k / NDCG@k of the held-out item over all items not in the user's training data."""
    target = split.val if which == "val" else split.test
    keep = np.flatnonzero(target >= 0)
    hist = torch.as_tensor(eval_histories(split, which, model.cfg.history_len, keep))
    users = torch.as_tensor(keep)
    model.eval()
    v, b = model.all_item_vectors()
    ranked = []
    for s in range(0, len(keep), 256):
        h = hist[s : s + 256]
        u = model.user_from_vectors(users[s : s + 256], h, v)
        scores = model.scale * u @ v.T + b  # (B, N)
        for j, up in enumerate(keep[s : s + 256].tolist()):
            excl = split.train[up]
            if which == "test" and split.val[up] >= 0:
                excl = np.append(excl, split.val[up])
            scores[j, torch.as_tensor(excl)] = float("-inf")
        ranked.append(torch.topk(scores, k, dim=1).indices.numpy())
    r = np.concatenate(ranked)
    rel = [np.array([t]) for t in target[keep]]
    return {f"recall@{k}": recall_at_k(r, rel, k), f"ndcg@{k}": ndcg_at_k(r, rel, k)}


def sessions(
    lists: list[np.ndarray], ts_lists: list[np.ndarray], *, seconds: int, cap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's interactions grouped by public time buckets of ``seconds``: (S, cap) rows, -1 padded.

    Returns the rows and each row's user position (S,).

    A session holds the first ``cap`` interactions (in time order) a user made within one bucket
    ``[k·seconds, (k+1)·seconds)``. Buckets are fixed in time, not by the data, so adding or removing one
    interaction changes exactly one session (or adds or removes one): the basis of the group-of-2
    accounting of session samples (:mod:`shared.privacy`).
    """
    out: list[np.ndarray] = []
    owner: list[int] = []
    for u, (items, ts) in enumerate(zip(lists, ts_lists, strict=True)):
        if not len(items):
            continue
        bucket = np.asarray(ts, np.int64) // seconds
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])  # time order: buckets are contiguous
        for a, b in zip(starts, [*starts[1:], len(items)], strict=True):
            row = np.full(cap, -1, np.int64)
            chunk = np.asarray(items[a:b])[:cap]
            row[: len(chunk)] = chunk
            out.append(row)
            owner.append(u)
    rows = np.stack(out) if out else np.zeros((0, cap), np.int64)
    return rows, np.asarray(owner, np.int64)


def session_losses(model: Recommender, rows: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-session losses (B,): every item of a session against the negatives, given the session's other items.

    rows (B, K) catalogue rows, -1 padded; negatives (B, M). The context of item t is the mean vector of the
    session's other items (zero for a one-item session, where only the bias speaks), so a session's loss
    depends on that session alone and the batch dimension stays first (exact per-sample gradients).
    """
    k = rows.shape[1]
    mask = (rows >= 0).float()  # (B, K)
    v, b = model.items(torch.cat([rows.clamp_min(0), negatives], dim=1))  # (B, K+M, D), (B, K+M)
    vs = v[:, :k] * mask[..., None]  # (B, K, D)
    cnt = mask.sum(1, keepdim=True)  # (B, 1)
    ctx = (vs.sum(1, keepdim=True) - vs) / (cnt - 1).clamp_min(1.0)[..., None]  # (B, K, D) leave-one-out means
    pos = (vs * ctx).sum(-1) + b[:, :k]  # (B, K)
    neg = torch.einsum("bkd,bmd->bkm", ctx, v[:, k:]) + b[:, None, k:]  # (B, K, M)
    logits = torch.cat([pos[..., None], neg], dim=-1) / temperature  # (B, K, 1+M)
    ce = F.cross_entropy(logits.flatten(0, 1), torch.zeros(logits.shape[0] * k, dtype=torch.long), reduction="none")
    return (ce.view(-1, k) * mask).sum(1) / cnt.squeeze(1).clamp_min(1.0)
