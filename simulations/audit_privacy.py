"""Privacy audit: membership inference on the global model and leakage from one client's upload.

Training here is in-process FedAvg over the real client functions (:func:`client.train.train_plain`
/ :func:`client.train.train_dp`, the noise planned by :func:`client.privacy.plan_noise`, ε from the
Opacus RDP accountant), so the DP mechanism audited is exactly the one the ClientApp runs.

Membership inference (the attacker holds the global model and knows a user's two most recent
items, which are never trained on):

* ``score``: threshold on the item's score for the user vector built from the known items;
* ``calibrated`` (reference model, LiRA-style offline): the same score minus the score under a
  reference model trained by the same recipe on a disjoint half of the users. Users are split in
  halves A and B; the model of A is the target for A's users and the reference for B's, and vice
  versa, so every attacked user has a target that saw it and a reference that did not;
* ``item-calibrated``: the score minus the item's mean score over all attacked users.

Members are a user's training interactions; non-members an equal number of items the user never
interacted with. AUC is the Mann–Whitney statistic, advantage the largest TPR − FPR.

Upload leakage (the honest-but-curious server sees one client's upload in the clear): a one-user
device trains one round from the global model; the server ranks catalogue items by how much the
upload raises them and scores precision@10 against the user's training items.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from client.config import ClientRunConfig, LocalConfig, PrivacyConfig
from client.data import NodeData, subset_split
from client.privacy import NodePrivacy, plan_noise
from client.train import build_model, train_dp, train_plain
from shared.config import ModelConfig
from shared.model import Recommender
from shared.pipeline import Prepared
from shared.splits import Split, partition_users

log = logging.getLogger(__name__)

RUNS = ("fed", "fed-dp-eps8", "fed-dp-eps1")
RUN_EPSILON = {"fed": 0.0, "fed-dp-eps8": 8.0, "fed-dp-eps1": 1.0}


# --------------------------------------------------------------------------- attack statistics


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score) + ½ P(tie): the Mann–Whitney AUC (0.5 = chance)."""
    m, n = np.asarray(members, np.float64).ravel(), np.asarray(nonmembers, np.float64).ravel()
    if not len(m) or not len(n):
        raise ValueError("auc needs at least one member and one non-member score")
    allv = np.concatenate([m, n])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv), np.float64)
    sv = allv[order]
    # average ranks over ties (1-based)
    bounds = np.flatnonzero(np.diff(sv)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(sv)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2.0
    return float(u / (len(m) * len(n)))


def advantage(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Largest TPR − FPR over every threshold ("member" when score ≥ threshold); 0 = no advantage."""
    m, n = np.asarray(members, np.float64).ravel(), np.asarray(nonmembers, np.float64).ravel()
    if not len(m) or not len(n):
        raise ValueError("advantage needs at least one member and one non-member score")
    thr = np.unique(np.concatenate([m, n]))
    ms, ns = np.sort(m), np.sort(n)
    tpr = 1.0 - np.searchsorted(ms, thr, side="left") / len(m)
    fpr = 1.0 - np.searchsorted(ns, thr, side="left") / len(n)
    return float(max(0.0, (tpr - fpr).max()))


def precision_at_k(ranking: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Share of the first ``k`` entries of ``ranking`` that are in ``truth``."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    top = np.asarray(ranking)[:k]
    return float(np.isin(top, np.asarray(truth)).sum() / k)


def random_precision(num_true: int, num_items: int) -> float:
    """Expected precision@k of a uniformly random ranking (any k ≤ num_items): num_true / num_items."""
    return num_true / num_items


# --------------------------------------------------------------------------- in-process FedAvg


@dataclass
class AuditRun:
    """Settings of the audit's federated trainings (a reduced but honest configuration)."""

    rounds: int = 5
    nodes_per_half: int = 8
    local: LocalConfig = dataclasses.field(default_factory=lambda: LocalConfig(batch_size=64))
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "nodes-per-half": self.nodes_per_half,
            "local": dataclasses.asdict(self.local),
            "seed": self.seed,
        }


def half_split(num_users: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of user positions (seeded)."""
    perm = np.random.default_rng(seed).permutation(num_users)
    h = num_users // 2
    return np.sort(perm[:h]), np.sort(perm[h:])


def fedavg_train(
    prep: Prepared,
    users: np.ndarray,
    rc: ClientRunConfig,
    run: AuditRun,
    *,
    epsilon: float,
) -> tuple[Recommender, dict[str, Any]]:
    """FedAvg over ``run.nodes_per_half`` nodes holding ``users``; DP-SGD on every node when ε > 0.

    Returns the global model (personal user mode under DP, as the ServerApp aggregates it) and stats.
    """
    dp = epsilon > 0
    pcfg = dataclasses.replace(rc.dp, enabled=dp, target_epsilon=epsilon)
    mcfg = dataclasses.replace(rc.core.model, user_mode="personal") if dp else rc.core.model
    parts = [users[p] for p in partition_users(len(users), run.nodes_per_half)]
    nodes = [NodeData(subset_split(prep.split, p), prep.cache, prep.backbone) for p in parts]
    torch.manual_seed(run.seed)
    glob = Recommender(mcfg, prep.cache, 1, prep.backbone)
    personal: list[dict[str, torch.Tensor] | None] = [None] * len(nodes)
    privacy = [
        NodePrivacy(
            noise_multiplier=plan_noise(pcfg, num_rounds=run.rounds, fraction=1.0)
        )
        if dp
        else None
        for nd in nodes
    ]
    eps: list[float] = [0.0] * len(nodes)
    t0 = time.time()
    for rnd in range(1, run.rounds + 1):
        acc: dict[str, torch.Tensor] = {}
        total = 0
        for i, nd in enumerate(nodes):
            model = build_model(mcfg, nd, seed=run.seed + i)
            model.load_partial(glob.shared_state())
            if personal[i] is not None:
                model.load_partial(personal[i])  # type: ignore[arg-type]
            rng = np.random.default_rng((run.seed * 1_000_003 + i) * 1000 + rnd)
            if dp:
                p = privacy[i]
                assert p is not None
                res = train_dp(model, nd, p, lcfg=run.local, tcfg=rc.core.train, pcfg=pcfg)
                eps[i] = res.epsilon
            else:
                res = train_plain(model, nd, lcfg=run.local, tcfg=rc.core.train, rng=rng)
            personal[i] = {k: v.clone() for k, v in model.personal_state().items()}
            # the upload travels as float16 (local.upload-dtype), the aggregate is float32
            up = {k: v.to(torch.float16).float() for k, v in model.shared_state().items()}
            for k, v in up.items():
                acc[k] = acc.get(k, 0) + v * res.num_examples
            total += res.num_examples
        glob.load_partial({k: v / total for k, v in acc.items()})
        log.info("audit fedavg eps=%s round %d/%d (%.0fs)", epsilon, rnd, run.rounds, time.time() - t0)
    stats = {
        "users": int(len(users)),
        "nodes": len(nodes),
        "epsilon-max": float(max(eps)),
        "noise-multiplier-mean": float(np.mean([p.noise_multiplier for p in privacy if p])) if dp else 0.0,
        "seconds": round(time.time() - t0, 1),
    }
    return glob, stats


# --------------------------------------------------------------------------- membership inference


@torch.no_grad()
def attacker_user_vectors(model: Recommender, known: np.ndarray) -> torch.Tensor:
    """User vectors (B, D) from known item rows (B, L) (-1 padded) through the shared model only.

    ``history`` mode: the shared recency/mix map with a zero personal vector (what the server or an
    API user can compute); ``personal`` mode: the plain mean of the known items' vectors.
    """
    model.eval()
    v, _ = model.all_item_vectors()
    h = torch.as_tensor(known)
    mask = h >= 0
    hv = v[h.clamp_min(0)]
    if model.cfg.user_mode == "history":
        zeros = torch.zeros(len(h), dtype=torch.long)
        return model.user(zeros, hv, mask) - model.user.personal(zeros)
    w = mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bl,bld->bd", w, hv)


@torch.no_grad()
def pair_scores(model: Recommender, user_vecs: torch.Tensor, items: np.ndarray) -> np.ndarray:
    """Scores of items (B, C) for user vectors (B, D)."""
    v, b = model.all_item_vectors()
    it = torch.as_tensor(items)
    return (model.scale * torch.einsum("bd,bcd->bc", user_vecs, v[it]) + b[it]).numpy()


def mia_pairs(
    split: Split, users: np.ndarray, per_user: int, rng: np.random.Generator, *, known: str, history_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attack pairs: candidate items (N,), membership labels (N,), what the attacker knows (N, L).

    Per user, ``per_user`` distinct training items (members) and as many never-interacted items.
    ``known``: ``recent`` = the user's two most recent items (validation and test, never trained
    on); ``history`` = the user's other training items (the newest ``history_len``, the candidate
    itself left out), as when part of a history is public or was shared elsewhere.
    """
    if known not in ("recent", "history"):
        raise ValueError(f"known must be 'recent' or 'history', got {known!r}")
    items, labels, hist = [], [], []
    for u in users:
        tr = split.train[u]
        seen = np.unique(np.concatenate([tr, [split.val[u], split.test[u]]]))
        uniq = np.unique(tr)
        mem = rng.choice(uniq, size=min(per_user, len(uniq)), replace=False)
        non = rng.choice(np.setdiff1d(np.arange(split.num_items), seen), size=len(mem), replace=False)
        for item, label in [(i, 1) for i in mem] + [(i, 0) for i in non]:
            if known == "recent":
                row = np.array([split.val[u], split.test[u]])
            else:
                row = tr[tr != item][::-1][:history_len]  # newest first, the candidate left out
            pad = np.full(history_len if known == "history" else 2, -1, np.int64)
            pad[: len(row)] = row
            items.append(item)
            labels.append(label)
            hist.append(pad)
    return np.array(items), np.array(labels), np.stack(hist)


@torch.no_grad()
def flat_scores(model: Recommender, known: np.ndarray, items: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Score of each candidate (N,) for the user vector built from its known items (N, L)."""
    out = []
    for s in range(0, len(items), batch):
        uv = attacker_user_vectors(model, known[s : s + batch])
        out.append(pair_scores(model, uv, items[s : s + batch, None]).ravel())
    return np.concatenate(out)


def membership_inference(
    prep: Prepared,
    models: dict[str, Recommender],
    halves: tuple[np.ndarray, np.ndarray],
    *,
    users_per_half: int = 150,
    per_user: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Run the attacks; ``models`` = {"A": trained on halves[0], "B": trained on halves[1]}.

    Returns, per attacker knowledge (``recent``, ``history``), the score, calibrated and
    item-calibrated AUC/advantage, plus the strongest calibrated attack as ``calibrated_auc`` /
    ``calibrated_advantage``.
    """
    out: dict[str, float] = {}
    hl = models["A"].cfg.history_len
    for known in ("recent", "history"):
        rng = np.random.default_rng(seed)
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("items", "labels", "t", "r")}
        for tgt, ref, half in (("A", "B", halves[0]), ("B", "A", halves[1])):
            users = rng.choice(half, size=min(users_per_half, len(half)), replace=False)
            items, labels, kn = mia_pairs(prep.split, users, per_user, rng, known=known, history_len=hl)
            cols["items"].append(items)
            cols["labels"].append(labels)
            cols["t"].append(flat_scores(models[tgt], kn, items))
            # the model that did NOT train on these users: the reference of the calibrated attack,
            # and what the plain score attack achieves by generalisation alone
            cols["r"].append(flat_scores(models[ref], kn, items))
        c = {k: np.concatenate(v) for k, v in cols.items()}
        m = c["labels"] == 1
        cal = c["t"] - c["r"]
        # item-calibrated: subtract each item's mean score over all attacked pairs
        sums = np.bincount(c["items"], c["t"], minlength=prep.split.num_items)
        cnt = np.bincount(c["items"], minlength=prep.split.num_items)
        icl = c["t"] - (sums / np.maximum(cnt, 1))[c["items"]]
        out |= {
            f"{known}.score_auc": auc(c["t"][m], c["t"][~m]),
            f"{known}.score_advantage": advantage(c["t"][m], c["t"][~m]),
            f"{known}.score_auc_users_not_trained": auc(c["r"][m], c["r"][~m]),
            f"{known}.calibrated_auc": auc(cal[m], cal[~m]),
            f"{known}.calibrated_advantage": advantage(cal[m], cal[~m]),
            f"{known}.item_calibrated_auc": auc(icl[m], icl[~m]),
            f"{known}.item_calibrated_advantage": advantage(icl[m], icl[~m]),
            f"{known}.pairs": float(len(m)),
        }
    best = max(("recent", "history"), key=lambda k: out[f"{k}.calibrated_auc"])
    out["calibrated_auc"] = out[f"{best}.calibrated_auc"]
    out["calibrated_advantage"] = max(out["recent.calibrated_advantage"], out["history.calibrated_advantage"])
    out["strongest_knowledge"] = best  # type: ignore[assignment]
    return out


# --------------------------------------------------------------------------- upload leakage


def leak_rankings(
    model: Recommender, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
) -> dict[str, np.ndarray]:
    """The server's candidate rankings of catalogue rows from one upload (most suspicious first).

    * ``bias``: by how much the upload raises the item's bias (when the model uploads biases);
    * ``score``: by how much it raises the item's score for a probe user (the mean global item vector);
    * ``residual``: by the norm of the item's ID-residual change (when the model has one).
    """
    out: dict[str, np.ndarray] = {}
    if "items.bias.weight" in before:  # only when the model uploads per-item biases
        db = (after["items.bias.weight"] - before["items.bias.weight"]).squeeze(-1).numpy()
        out["bias"] = np.argsort(-db, kind="stable")
    model.load_partial(before)
    v0, b0 = model.all_item_vectors()
    probe = v0.mean(0)
    s0 = model.scale.detach() * v0 @ probe + b0
    model.load_partial(after)
    v1, b1 = model.all_item_vectors()
    s1 = model.scale.detach() * v1 @ probe + b1
    out["score"] = np.argsort(-(s1 - s0).numpy(), kind="stable")
    if "items.id_residual.weight" in before:
        dr = (after["items.id_residual.weight"] - before["items.id_residual.weight"]).norm(dim=1).numpy()
        out["residual"] = np.argsort(-dr, kind="stable")
    model.load_partial(before)
    return out


def upload_leakage(
    prep: Prepared,
    glob: Recommender,
    users: np.ndarray,
    rc: ClientRunConfig,
    *,
    epsilon: float,
    id_residual: bool,
    lcfg: LocalConfig,
    num_rounds: int,
    seed: int = 0,
) -> dict[str, float]:
    """Precision@10 of the best server ranking of one-user uploads, averaged over ``users``."""
    dp = epsilon > 0
    pcfg: PrivacyConfig = dataclasses.replace(rc.dp, enabled=dp, target_epsilon=epsilon)
    mcfg: ModelConfig = dataclasses.replace(glob.cfg, id_residual=id_residual)
    torch.manual_seed(seed)
    base = Recommender(mcfg, prep.cache, 1, prep.backbone)
    base.load_partial(glob.shared_state())  # the trained global model (a fresh ID residual when added here)
    before = {k: v.clone() for k, v in base.shared_state().items()}
    prec: dict[str, list[float]] = {}
    rand, noise = [], []
    for j, u in enumerate(users):
        nd = NodeData(subset_split(prep.split, np.array([u])), prep.cache, prep.backbone)
        model = build_model(mcfg, nd, seed=seed + j)
        model.load_partial(before)
        rng = np.random.default_rng(seed * 7919 + j)
        if dp:
            p = NodePrivacy(
                plan_noise(pcfg, num_rounds=num_rounds, fraction=1.0)
            )
            noise.append(p.noise_multiplier)
            train_dp(model, nd, p, lcfg=lcfg, tcfg=rc.core.train, pcfg=pcfg)
        else:
            train_plain(model, nd, lcfg=lcfg, tcfg=rc.core.train, rng=rng)
        after = {k: v.to(torch.float16).float() for k, v in model.shared_state().items()}  # the wire dtype
        truth = np.unique(prep.split.train[u])
        for name, ranking in leak_rankings(base, before, after).items():
            prec.setdefault(name, []).append(precision_at_k(ranking, truth, 10))
        rand.append(random_precision(len(truth), prep.split.num_items))
    # what the server would guess without the upload: the global model's own top items for the probe
    v0, b0 = base.all_item_vectors()
    prior = np.argsort(-(base.scale.detach() * v0 @ v0.mean(0) + b0).numpy(), kind="stable")
    prior_p10 = float(np.mean([precision_at_k(prior, np.unique(prep.split.train[u]), 10) for u in users]))
    means = {name: float(np.mean(v)) for name, v in prec.items()}
    best = max(means, key=lambda k: means[k])
    out = {"p10": means[best], "best_ranking": best, "random_p10": float(np.mean(rand)), "prior_p10": prior_p10}
    out.update({f"p10_{k}": v for k, v in means.items()})
    if noise:
        out["noise_multiplier_mean"] = float(np.mean(noise))
    return out  # type: ignore[return-value]
