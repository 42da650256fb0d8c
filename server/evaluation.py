"""Central evaluation of the global model in simulation (the server holds the dataset there).

The server has no personal parameters (they stay on the nodes), so its user vector is the shared
history summary only: the serving model's view of a user. Under record-level DP (personal user mode)
it is the plain mean of the history's item vectors.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.metrics import hit_rate, ndcg, rank_of_target
from shared.model import Recommender
from shared.splits import Split
from shared.training import eval_histories


@torch.no_grad()
def central_p1(model: Recommender, split: Split, which: str, k: int = 10) -> dict[str, float]:
    """HR@k / NDCG@k over every user of ``split`` with the global model and no personal vectors."""
    target = split.val if which == "val" else split.test
    negs = split.val_negatives if which == "val" else split.test_negatives
    keep = np.flatnonzero(target >= 0)
    model.eval()
    v, b = model.all_item_vectors()
    ranks = []
    for s in range(0, len(keep), 512):
        pos = keep[s : s + 512]
        hist = torch.as_tensor(eval_histories(split, which, model.cfg.history_len, pos))
        mask = hist >= 0
        hv = v[hist.clamp_min(0)]
        if model.cfg.user_mode == "history":
            zeros = torch.zeros(len(pos), dtype=torch.long)
            u = model.user(zeros, hv, mask) - model.user.personal(zeros)
        else:
            w = mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1.0)
            u = torch.einsum("bl,bld->bd", w, hv)
        cand = torch.as_tensor(np.concatenate([target[pos][:, None], negs[pos]], axis=1))
        ranks.append(rank_of_target((model.scale * torch.einsum("bd,bcd->bc", u, v[cand]) + b[cand]).numpy(), 0))
    r = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
    return {f"{which}-hr@{k}": hit_rate(r, k), f"{which}-ndcg@{k}": ndcg(r, k)}
