"""Reference baselines in the same harness: MostPop and BPR matrix factorisation (centralised)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from shared.metrics import ndcg_at_k, rank_of_target, recall_at_k
from shared.splits import Split

#: score_fn(user positions (B,), candidate rows (B, C)) -> scores (B, C)
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def p1_ranks_of(score_fn: ScoreFn, split: Split, which: str) -> np.ndarray:
    """P1 ranks of each user's held-out item for any scorer."""
    target = split.val if which == "val" else split.test
    negs = split.val_negatives if which == "val" else split.test_negatives
    keep = np.flatnonzero(target >= 0)
    cand = np.concatenate([target[keep][:, None], negs[keep]], axis=1)
    return rank_of_target(score_fn(keep, cand), 0)


def full_ranking_of(score_all: Callable[[np.ndarray], np.ndarray], split: Split, k: int = 20) -> dict[str, float]:
    """Recall@k / NDCG@k of the test item over all items outside the user's training (and val) items."""
    keep = np.flatnonzero(split.test >= 0)
    scores = score_all(keep).astype(np.float64)  # (B, N)
    for j, u in enumerate(keep.tolist()):
        scores[j, split.train[u]] = -np.inf
        if split.val[u] >= 0:
            scores[j, split.val[u]] = -np.inf
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rel = [np.array([t]) for t in split.test[keep]]
    return {f"recall@{k}": recall_at_k(ranked, rel, k), f"ndcg@{k}": ndcg_at_k(ranked, rel, k)}


class MostPop:
    """Scores every item by its number of training interactions."""

    def __init__(self, split: Split) -> None:
        self.counts = np.bincount(np.concatenate(split.train), minlength=split.num_items).astype(np.float64)

    def score(self, users: np.ndarray, cand: np.ndarray) -> np.ndarray:
        return self.counts[cand]

    def score_all(self, users: np.ndarray) -> np.ndarray:
        return np.tile(self.counts, (len(users), 1))


class BPRMF(nn.Module):
    """Matrix factorisation trained with the BPR pairwise loss (Rendle et al. 2009), plus item bias."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64) -> None:
        super().__init__()
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        self.bias = nn.Embedding(num_items, 1)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.zeros_(self.bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # users (B,), items (B, C) -> (B, C)
        return torch.einsum("bd,bcd->bc", self.user(users), self.item(items)) + self.bias(items).squeeze(-1)

    def fit_epoch(
        self, split: Split, opt: torch.optim.Optimizer, rng: np.random.Generator, batch: int = 1024, reg: float = 1e-4
    ) -> float:
        users = np.repeat(np.arange(split.num_users), [len(t) for t in split.train])
        pos = np.concatenate(split.train)
        order = rng.permutation(len(users))
        total = 0.0
        for s in range(0, len(order), batch):
            i = order[s : s + batch]
            u = torch.as_tensor(users[i])
            items = torch.as_tensor(np.stack([pos[i], rng.integers(0, split.num_items, len(i))], axis=1))
            x = self(u, items)
            loss = -torch.nn.functional.logsigmoid(x[:, 0] - x[:, 1]).mean()
            loss = loss + reg * (self.user(u).pow(2).sum(1).mean() + self.item(items).pow(2).sum((1, 2)).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(i)
        return total / len(order)

    @torch.no_grad()
    def score(self, users: np.ndarray, cand: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(users), torch.as_tensor(cand)).numpy()

    @torch.no_grad()
    def score_all(self, users: np.ndarray) -> np.ndarray:
        u = self.user(torch.as_tensor(users))
        return (u @ self.item.weight.T + self.bias.weight.T).numpy()
