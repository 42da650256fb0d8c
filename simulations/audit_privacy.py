"""Privacy audit of the presets' own trained models: membership inference, upload leakage, noise replay.

Nothing here trains a stand-in: the audited models are the checkpoints the benchmarks leave under
``results/fed/<preset>/checkpoint`` (:func:`preset_checkpoints`), read back exactly as the serving
API reads them (:class:`shared.serving.ServingModel`), and the device rounds are the client's own
functions (:func:`client.train.train_plain` / :func:`client.train.train_dp`) with each preset's
settings (:mod:`simulations.presets`).

**Membership inference** (:func:`membership_inference`; the attacker holds the served model and some
of a target user's interactions, and asks whether a candidate item was in that user's training data).
Per attacked user: *members* are training interactions, *non-members* as many catalogue items the user
never interacted with (seeded), and, as a control, the user's two *held-out* interactions (validation
and test: real interactions of the user that no preset trains on). What the attacker knows:

* ``recent``: the user's ``recent`` newest interactions other than the candidate;
* ``history``: every interaction of the user except the candidate (for a never-interacted candidate one
  random training item is left out too, so that every known history has the same length).

The user vector is :meth:`ServingModel.user_vector` of the known items (what the API computes from a
request's history) and the candidate's score is what the API would return. Attacks:

* ``score``: threshold on that score;
* ``user_calibrated``: the score as a z-score against the same user vector's scores over ``ref_items``
  catalogue items drawn at random (the attacker cannot tell which of them the user had);
* ``item_calibrated``: the score minus the item's mean score over every attacked user's vector
  (removes what is true of the item for everyone, e.g. popularity);
* ``calibrated``: both (the item-centred score, z-scored per user against random items);
* ``reference``: the score minus the same candidate's score under the preset's public start (its
  round-0 model, built from the public catalogue and trained on nobody): what training added.

Each attack reports ``auc`` (members against non-members), ``auc_heldout`` (the same attack with the
user's held-out interactions in place of the members: what taste and popularity give *without* the
item having been trained on), ``auc_member_vs_heldout`` (members against held-out interactions) and
``auc_newest_vs_heldout`` (the user's two newest training interactions against its two held-out
ones, their neighbours in time: 0.5 = training on an item made no difference to its score).
AUC is the Mann–Whitney statistic, advantage the largest TPR − FPR.

**Upload leakage** (:func:`upload_leakage`; the honest-but-curious server sees one device's upload in
the clear): a one-user device trains one round from the preset's model with the preset's local
settings (under DP: its σ, sampling rate, steps, clipping and normaliser); the server ranks catalogue
items by how much the upload raises them and scores precision@10 against the user's training items.

**Noise replay** (:func:`replay_attack`; the server tries to regenerate a device's DP noise and
subtract it): under the old seeding the device's randomness came from ``(node_id · 1_000_003 + round)
mod 2³¹`` (:func:`old_dp_seed`), which the server knows; now it comes from OS entropy. The attack
replays the round with every seed it can derive and measures how close it gets to the real upload and
to the clean (noise-free) update.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.config import ClientRunConfig, LocalConfig, PrivacyConfig
from client.data import NodeData, subset_split
from client.privacy import NodePrivacy, plan_noise
from client.train import _groups, build_model, dp_samples, train_dp, train_plain
from shared.config import DEFAULT_DATASET, ModelConfig, TrainConfig
from shared.model import Recommender
from shared.pipeline import Prepared
from shared.serving import ServingModel
from shared.splits import Split
from simulations.options import AUDIT_PRESETS

log = logging.getLogger(__name__)

#: presets whose models membership inference audits (``fed`` = the non-private reference)
MIA_PRESETS = AUDIT_PRESETS
#: presets whose single upload the server sees in the clear (``fed-sdp-*`` uploads only inside SecAgg+)
LEAK_PRESETS = ("fed", "fed-dp-eps8", "fed-dp-eps4", "fed-dp-eps1")


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


# --------------------------------------------------------------------------- the presets' models


def checkpoint_dir(preset: str, results: Path, dataset: str = DEFAULT_DATASET) -> Path:
    """Where the benchmarks leave ``preset``'s trained model (``fed/<dataset>-<preset>`` for another dataset)."""
    return results / "fed" / (preset if dataset == DEFAULT_DATASET else f"{dataset}-{preset}") / "checkpoint"


def make_command(preset: str, dataset: str = DEFAULT_DATASET) -> str:
    """The documented command that trains ``preset`` and writes its checkpoint."""
    from simulations.presets import DP_SUMMARY_KEYS

    bench = "bench_dp" if preset in DP_SUMMARY_KEYS else "bench_fed"
    data = "" if dataset == DEFAULT_DATASET else f" --dataset {dataset}"
    return f"python -m simulations.{bench} --presets {preset}{data}"


def preset_checkpoints(
    presets: tuple[str, ...], results: Path, dataset: str = DEFAULT_DATASET
) -> tuple[dict[str, Path], dict[str, str]]:
    """The presets' checkpoint directories that exist, and a message for each one that does not."""
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for name in presets:
        d = checkpoint_dir(name, results, dataset)
        if (d / "fedxrec.json").is_file():
            found[name] = d
        else:
            missing[name] = f"no checkpoint at {d}: train it with `{make_command(name, dataset)}`"
    return found, missing


def check_catalogue(item_ids: list[int], catalogue_ids: list[int], where: Path) -> None:
    """The checkpoint's rows must be the catalogue's rows in order (the split is in catalogue rows)."""
    if list(item_ids) != list(catalogue_ids):
        raise ValueError(f"{where}: its item ids are not the prepared catalogue's (another dataset or split?)")


def global_model(ck: Any, prep: Prepared) -> Recommender:
    """A one-user :class:`Recommender` holding a checkpoint's shared parameters (the global model)."""
    model = Recommender(ck.config, prep.cache, 1, prep.backbone)
    model.load_partial({k: v.float() for k, v in ck.shared.items()})
    return model


@torch.no_grad()
def serving_of(model: Recommender, item_ids: list[int]) -> ServingModel:
    """The served form of an in-memory model (what a checkpoint of it would serve)."""
    from shared.checkpoint import Checkpoint

    model.eval()
    vecs, bias = model.all_item_vectors()
    shared = {k: v.clone() for k, v in model.public_state().items()}
    return ServingModel(Checkpoint(model.cfg, shared, vecs.clone(), bias.clone(), list(item_ids), {}))


# --------------------------------------------------------------------------- membership inference


@dataclass
class MiaSettings:
    """What the membership-inference attacker does (all public; stated in the provenance)."""

    #: attacked users (0: every user of the split)
    users: int = 0
    #: members per attacked user (as many non-members; plus the two held-out interactions)
    per_user: int = 20
    #: ``recent`` knowledge: this many newest interactions of the user, the candidate left out
    recent: int = 3
    #: random catalogue items per user for the per-user calibration
    ref_items: int = 200
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "members": "the user's training interactions (per-user sample)",
            "non-members": "as many catalogue items the user never interacted with (uniform, seeded)",
            "held-out control": "the user's validation and test interactions (never trained on), and its two "
            "newest training interactions (their neighbours in time)",
            "attacker-knows": {
                "recent": f"the user's {self.recent} newest interactions other than the candidate",
                "history": "every interaction of the user except the candidate (never-interacted candidates: "
                "one random training item also left out, so every known history has the same length)",
            },
            "user-vector": "shared.serving.ServingModel.user_vector of the known items (what the API computes)",
            "attacks": {
                "score": "threshold on the served score",
                "user_calibrated": f"z-score against the user's scores over {self.ref_items} random catalogue items",
                "item_calibrated": "score minus the item's mean score over every attacked user's vector",
                "calibrated": "item-centred, then z-scored per user against random items",
                "reference": "score minus the score under the preset's public start (round-0 model, trained on "
                "nobody) for the same known items",
            },
            "keys": {
                "mia_auc": "membership: score attack, history knowledge, the user's two newest training "
                "interactions against its two held-out ones (same user and taste, neighbours in time; "
                "0.5 = training made no difference)",
                "mia_score_auc": "score threshold, history knowledge: training items vs never-interacted items "
                "(taste and membership together)",
                "mia_auc_recent": "score attack, recent knowledge",
                "mia_auc_calibrated": "calibrated attack (item-centred, per-user z-score), history knowledge",
                "mia_auc_reference": "reference attack (minus the public start's score), history knowledge",
                "mia_auc_heldout": "control: score attack, history knowledge, the user's held-out interactions "
                "(never trained on) in place of the members",
                "mia_auc_public_start": "control: score attack, history knowledge, on the preset's round-0 model "
                "(public catalogue start, trained on nobody)",
                "mia_advantage": "score attack, history knowledge: max TPR - FPR",
            },
        }


#: candidate labels: a training interaction (sampled), a never-interacted item, a held-out interaction
#: (validation or test), and one of the user's two newest training interactions (the held-out items'
#: neighbours in time, for the membership control that compares like with like)
MEMBER, NONMEMBER, HELDOUT, NEWEST = 1, 0, 2, 3


def timeline(split: Split, u: int) -> np.ndarray:
    """All of user ``u``'s interactions, oldest first (training items, then validation and test)."""
    held = [int(x) for x in (split.val[u], split.test[u]) if x >= 0]
    return np.concatenate([split.train[u], np.array(held, np.int64)]).astype(np.int64)


def mia_candidates(
    split: Split, users: np.ndarray, per_user: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates (N,), labels (N,: :data:`MEMBER`, :data:`NONMEMBER`, :data:`HELDOUT`, :data:`NEWEST`), users (N,)."""
    items, labels, owner = [], [], []
    for u in users:
        u = int(u)
        seen = np.unique(split.seen[u]) if split.seen is not None else np.unique(timeline(split, u))
        seen = np.union1d(seen, timeline(split, u))
        uniq = np.unique(split.train[u])
        mem = rng.choice(uniq, size=min(per_user, len(uniq)), replace=False)
        non = rng.choice(np.setdiff1d(np.arange(split.num_items), seen), size=len(mem), replace=False)
        held = np.array([x for x in (split.val[u], split.test[u]) if x >= 0], np.int64)
        held = held[~np.isin(held, split.train[u])]  # a re-watched item would be a member too
        newest = np.unique(split.train[u][-len(held) :]) if len(held) else held
        for arr, lab in ((mem, MEMBER), (non, NONMEMBER), (held, HELDOUT), (newest, NEWEST)):
            items.extend(int(i) for i in arr)
            labels.extend([lab] * len(arr))
            owner.extend([u] * len(arr))
    return np.array(items, np.int64), np.array(labels, np.int64), np.array(owner, np.int64)


def known_items(
    split: Split, u: int, item: int, label: int, knowledge: str, *, recent: int, rng: np.random.Generator
) -> np.ndarray:
    """What the attacker knows of user ``u`` when testing ``item`` (catalogue rows, oldest first)."""
    line = timeline(split, u)
    rest = line[line != item]  # members, newest and held-out candidates: the candidate left out
    if knowledge == "recent":
        return rest[-recent:]
    if knowledge != "history":
        raise ValueError(f"knowledge must be 'recent' or 'history', got {knowledge!r}")
    if label == NONMEMBER and len(split.train[u]) > 1:  # same length as a member's known history
        drop = int(rng.integers(len(split.train[u])))
        keep = np.ones(len(rest), bool)
        keep[drop] = False  # rest == line here: its first len(train) entries are the training items
        rest = rest[keep]
    return rest


def attack_scores(
    sm: ServingModel,
    split: Split,
    items: np.ndarray,
    labels: np.ndarray,
    owner: np.ndarray,
    knowledge: str,
    settings: MiaSettings,
    reference: ServingModel | None = None,
) -> dict[str, np.ndarray]:
    """Every attack's score (N,) for each candidate, under ``knowledge``.

    With a ``reference`` model (one that trained on nobody, e.g. the preset's public start) the
    ``reference`` attack is the candidate's score minus its score under the reference, for the same
    known items: what training added to the score (a LiRA-style offline reference-model attack).
    """
    rng = np.random.default_rng([settings.seed, 1 if knowledge == "history" else 2])
    known = [
        known_items(split, int(u), int(i), int(lab), knowledge, recent=settings.recent, rng=rng)
        for i, lab, u in zip(items, labels, owner, strict=True)
    ]
    uv = np.stack([sm.user_vector(k) for k in known]).astype(np.float32)
    score = sm.scale * np.einsum("nd,nd->n", uv, sm.vectors[items]) + sm.bias[items]
    users = np.unique(owner)
    # item means over one vector per attacked user (its known items, nothing left out)
    base = np.stack(
        [
            sm.user_vector(
                timeline(split, int(u))[-settings.recent :] if knowledge == "recent" else timeline(split, int(u))
            )
            for u in users
        ]
    ).astype(np.float32)
    item_mean = (sm.scale * base @ sm.vectors.T + sm.bias[None, :]).mean(0)  # (num_items,)
    centred = score - item_mean[items]
    user_cal, cal = np.empty_like(score), np.empty_like(score)
    for u in users:
        idx = np.flatnonzero(owner == u)
        # the user's reference items: uniform over the catalogue (the same for each of its candidates)
        ref = rng.choice(sm.num_items, size=min(settings.ref_items, sm.num_items), replace=False)
        rs = sm.scale * uv[idx] @ sm.vectors[ref].T + sm.bias[ref][None, :]  # (P, R)
        rc = rs - item_mean[ref][None, :]
        user_cal[idx] = (score[idx] - rs.mean(1)) / np.maximum(rs.std(1), 1e-9)
        cal[idx] = (centred[idx] - rc.mean(1)) / np.maximum(rc.std(1), 1e-9)
    out = {"score": score, "user_calibrated": user_cal, "item_calibrated": centred, "calibrated": cal}
    if reference is not None:
        rv = np.stack([reference.user_vector(k) for k in known]).astype(np.float32)
        out["reference"] = score - (
            reference.scale * np.einsum("nd,nd->n", rv, reference.vectors[items]) + reference.bias[items]
        )
    return out


def membership_inference(
    sm: ServingModel, split: Split, settings: MiaSettings, reference: ServingModel | None = None
) -> dict[str, Any]:
    """Every attack under both knowledges on one served model; ``auc`` etc. keyed ``<knowledge>.<attack>.*``.

    ``reference``: a model that trained on nobody, for the ``reference`` attack (:func:`attack_scores`).
    """
    rng = np.random.default_rng(settings.seed)
    users = np.arange(split.num_users)
    if settings.users and settings.users < len(users):
        users = np.sort(rng.choice(users, size=settings.users, replace=False))
    items, labels, owner = mia_candidates(split, users, settings.per_user, rng)
    mem, non, held, newest = labels == MEMBER, labels == NONMEMBER, labels == HELDOUT, labels == NEWEST
    out: dict[str, Any] = {
        "users": int(len(users)),
        "members": int(mem.sum()),
        "non-members": int(non.sum()),
        "held-out": int(held.sum()),
        "newest-trained": int(newest.sum()),
    }
    for knowledge in ("recent", "history"):
        for attack, s in attack_scores(sm, split, items, labels, owner, knowledge, settings, reference).items():
            key = f"{knowledge}.{attack}"
            out[f"{key}.auc"] = auc(s[mem], s[non])
            out[f"{key}.advantage"] = advantage(s[mem], s[non])
            if held.any():
                out[f"{key}.auc_heldout"] = auc(s[held], s[non])
                out[f"{key}.auc_member_vs_heldout"] = auc(s[mem], s[held])
                out[f"{key}.auc_newest_vs_heldout"] = auc(s[newest], s[held])
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


def _wire(state: dict[str, torch.Tensor], lcfg: LocalConfig) -> dict[str, torch.Tensor]:
    """The shared parameters as the server receives them (``local.upload-dtype``), back in float32."""
    dtype = torch.float16 if lcfg.upload_dtype == "float16" else torch.float32
    return {k: v.detach().to(dtype).float() for k, v in state.items()}


def upload_leakage(
    prep: Prepared,
    glob: Recommender,
    users: np.ndarray,
    preset: ClientRunConfig,
    *,
    id_residual: bool,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Precision@10 of the best server ranking of one-user uploads, averaged over ``users``.

    Each user is a device of its own that trains one round from ``glob`` (the preset's trained model)
    with the preset's local settings: :func:`train_dp` at the preset's planned σ under ``dp.enabled``,
    :func:`train_plain` otherwise. ``id_residual`` adds a fresh per-item ID residual to the model.
    """
    dp = preset.dp.enabled
    pcfg: PrivacyConfig = preset.dp
    mcfg: ModelConfig = dataclasses.replace(glob.cfg, id_residual=id_residual)
    torch.manual_seed(seed)
    base = Recommender(mcfg, prep.cache, 1, prep.backbone)
    base.load_partial(glob.public_state())  # the trained global model (a fresh ID residual when added here)
    public = {k: v.clone() for k, v in base.public_state().items()}
    before = {k: v.clone() for k, v in base.shared_state().items()}  # what a device trains and uploads
    sigma = plan_noise(pcfg, num_rounds=preset.num_rounds, fraction=preset.fraction_train) if dp else 0.0
    prec: dict[str, list[float]] = {}
    rand = []
    for j, u in enumerate(users):
        nd = NodeData(subset_split(prep.split, np.array([u])), prep.cache, prep.backbone)
        model = build_model(mcfg, nd, seed=seed + j)
        model.load_partial(public)
        if dp:
            privacy = NodePrivacy(sigma)
            train_dp(model, nd, privacy, lcfg=preset.local, tcfg=preset.core.train, pcfg=pcfg, proximal_mu=proximal_mu)
        else:
            rng = np.random.default_rng(seed * 7919 + j)
            train_plain(model, nd, lcfg=preset.local, tcfg=preset.core.train, rng=rng, proximal_mu=proximal_mu)
        after = _wire(model.shared_state(), preset.local)
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
    out: dict[str, Any] = {
        "p10": means[best],
        "best_ranking": best,
        "random_p10": float(np.mean(rand)),
        "prior_p10": prior_p10,
        "users": int(len(users)),
    }
    out.update({f"p10_{k}": v for k, v in means.items()})
    if dp:
        out["noise_multiplier"] = sigma
    return out


# --------------------------------------------------------------------------- noise replay


def old_dp_seed(node_id: int, server_round: int) -> int:
    """The seed of a device's DP randomness before OS entropy: derivable by the server."""
    return (int(node_id) * 1_000_003 + int(server_round)) % (2**31)


def candidate_seeds(node_id: int, server_round: int, partition_id: int, scan: int) -> dict[str, list[int]]:
    """Every seed a server could derive for one device round: by family (the old formula first)."""
    return {
        "old formula (node_id * 1_000_003 + round) mod 2^31": [old_dp_seed(node_id, server_round)],
        "round": [int(server_round)],
        "node id": sorted({int(node_id), int(node_id) % (2**31)}),
        "partition id": [int(partition_id)],
        f"0..{scan - 1}": list(range(scan)),
    }


@contextlib.contextmanager
def recorded_secure_seeds() -> Iterator[list[int]]:
    """The experimenter's instrument: record the OS-entropy seeds :func:`train_dp` draws (nobody else can)."""
    import client.train as ct

    drawn: list[int] = []
    real = ct.secure_seed

    def recording() -> int:
        s = real()
        drawn.append(s)
        return s

    ct.secure_seed = recording  # type: ignore[assignment]
    try:
        yield drawn
    finally:
        ct.secure_seed = real  # type: ignore[assignment]


def regenerate_noise(
    model: Recommender, pcfg: PrivacyConfig, *, num_samples: int, noise_multiplier: float, seed: int
) -> dict[str, torch.Tensor]:
    """The Gaussian noise :func:`train_dp` adds in its first step when seeded with ``seed``.

    Needs only public things: the architecture (parameter names, shapes and order), σ, the clipping
    norms and the device's number of training samples (which the old replies carried). Keyed by
    parameter name, for every parameter the device trains (a trained personal vector's noise is in the
    stream too).
    """
    gen = torch.Generator().manual_seed(int(seed))
    trained = model.scale.requires_grad
    model.scale.requires_grad_(False)  # as train_dp does: the scale has no per-sample rule
    try:
        groups = _groups(model, pcfg)
    finally:
        model.scale.requires_grad_(trained)
    names = {id(p): n for n, p in model.named_parameters()}
    std = noise_multiplier * pcfg.total_clip()
    torch.rand(num_samples, generator=gen)  # the first step's Poisson draw
    return {names[id(p)]: torch.normal(0.0, std, size=p.shape, generator=gen) for ps in groups.values() for p in ps}


def _max_abs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(max((a[k] - b[k]).abs().max() for k in a))


def _l2(a: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in a.values())))  # type: ignore[arg-type]


def replay_attack(
    model: Recommender,
    data: NodeData,
    *,
    pcfg: PrivacyConfig,
    lcfg: LocalConfig,
    tcfg: TrainConfig,
    noise_multiplier: float,
    node_id: int,
    server_round: int,
    partition_id: int = 0,
    proximal_mu: float = 0.0,
    scan: int = 256,
) -> dict[str, Any]:
    """Can the server replay a device's DP noise and subtract it? Old seeding against the current code.

    ``model`` is the device's model at the start of the round (the global model the server sent, plus
    the device's personal vector). The device runs the round twice: with the old derivable seed
    (``train_dp(..., test_seed=old_dp_seed(node_id, round))``) and as it runs now (``test_seed=None``:
    OS entropy). Against each upload the attacker tries every derivable seed (:func:`candidate_seeds`):

    * **upload replay** (an attacker that even knows the device's data, so stronger than a real one):
      rerun the round with the candidate seed; ``upload_max_abs_diff`` = max |replayed − real upload|;
    * **noise subtraction** (public knowledge only, plus the device's number of samples): regenerate
      the candidate's noise (:func:`regenerate_noise`) and remove it from the upload; the result is
      compared with the true clean update (the experimenter's rerun with the same randomness and σ = 0):
      ``clean_max_abs_diff``, on the float32 upload and on the wire upload (``local.upload-dtype``).

    The attack *succeeds* when some candidate recovers the clean update to within a tenth of the
    upload's per-coordinate noise std (``noise_std_in_upload`` = lr·(1 − lr·μ)·σ·C / expected-batch).
    Needs one local SGD step per round (the DP presets' recipe), where the upload is linear in the noise.
    """
    if pcfg.steps_per_round() != 1 or lcfg.optimizer != "sgd":
        raise ValueError(
            "the noise replay needs one local SGD step per round (dp.local-steps = 1, local.optimizer = sgd)"
        )
    n = len(dp_samples(data.split, pcfg))  # the Poisson draw is over the device's DP samples
    before = {k: v.clone() for k, v in model.shared_state().items()}
    coef = lcfg.lr * (1.0 - lcfg.lr * proximal_mu) / pcfg.expected_batch  # upload = before − coef·(S + Z)
    noise_std = coef * noise_multiplier * pcfg.total_clip()

    def device_round(seed: int | None, sigma: float) -> dict[str, torch.Tensor]:
        m = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # σ = 0 (the clean rerun) has ε = ∞
            train_dp(
                m, data, NodePrivacy(sigma), lcfg=lcfg, tcfg=tcfg, pcfg=pcfg, proximal_mu=proximal_mu, test_seed=seed
            )
        return {k: v.detach().clone() for k, v in m.shared_state().items()}

    def attack(upload: dict[str, torch.Tensor], true_seed: int) -> dict[str, Any]:
        clean = {k: v - before[k] for k, v in device_round(true_seed, 0.0).items()}  # the experimenter's truth
        wire = _wire(upload, lcfg)
        fams: dict[str, dict[str, Any]] = {}
        best: dict[str, Any] = {}
        for fam, seeds in candidate_seeds(node_id, server_round, partition_id, scan).items():
            rows = []
            for s in seeds:
                z = regenerate_noise(model, pcfg, num_samples=n, noise_multiplier=noise_multiplier, seed=s)
                noise_term = {k: coef * z[k] if k in z else torch.zeros_like(v) for k, v in before.items()}
                est = {k: upload[k] - before[k] + noise_term[k] for k in before}  # the attacker's clean update
                est_w = {k: wire[k] - before[k] + noise_term[k] for k in before}
                rows.append(
                    {
                        "seed": s,
                        "upload_max_abs_diff": _max_abs(device_round(s, noise_multiplier), upload),
                        "clean_max_abs_diff": _max_abs(est, clean),
                        "clean_max_abs_diff_wire": _max_abs(est_w, clean),
                        "clean_rel_l2_error": _l2({k: est[k] - clean[k] for k in before}) / max(_l2(noise_term), 1e-30),
                    }
                )
            top = min(rows, key=lambda r: r["clean_max_abs_diff"])
            fams[fam] = {
                "seeds": len(seeds),
                "min_upload_max_abs_diff": min(r["upload_max_abs_diff"] for r in rows),
                "min_clean_max_abs_diff": top["clean_max_abs_diff"],
                "min_clean_max_abs_diff_wire": min(r["clean_max_abs_diff_wire"] for r in rows),
            }
            if not best or top["clean_max_abs_diff"] < best["clean_max_abs_diff"]:
                best = top | {"family": fam}
        succeeded = best["clean_max_abs_diff_wire"] <= 0.1 * noise_std
        return {
            "verdict": "succeeds" if succeeded else "fails",
            "best_candidate": best,
            "upload_max_abs_diff": min(f["min_upload_max_abs_diff"] for f in fams.values()),
            "clean_max_abs_diff": best["clean_max_abs_diff"],
            "clean_max_abs_diff_wire": min(f["min_clean_max_abs_diff_wire"] for f in fams.values()),
            "by_family": fams,
            "candidates": sum(f["seeds"] for f in fams.values()),
        }

    old_seed = old_dp_seed(node_id, server_round)
    old = attack(device_round(old_seed, noise_multiplier), old_seed)
    with recorded_secure_seeds() as drawn:
        now_upload = device_round(None, noise_multiplier)
    if len(drawn) != 1:
        raise RuntimeError(f"expected train_dp to draw one OS-entropy seed, it drew {len(drawn)}")
    # the instrument is right: the recorded seed reproduces the device's upload bit for bit
    instrument = _max_abs(device_round(drawn[0], noise_multiplier), now_upload)
    now = attack(now_upload, drawn[0]) | {"recorded_seed_reproduces_upload_max_abs_diff": instrument}
    return {
        "old_seeding": old,
        "current": now,
        "noise_std_in_upload": noise_std,
        "noise_multiplier": noise_multiplier,
        "num_samples": n,
        "criterion": "succeeds when some derivable seed recovers the clean update (wire upload) to within "
        "0.1 x the per-coordinate noise std in the upload",
    }
