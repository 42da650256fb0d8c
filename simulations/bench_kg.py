"""KG benchmarks (issue 4): item cold start through KG neighbours, and path explanations.

**Cold start** (``cold.<method>`` = HR@10 and Recall@20 for ``random``, ``text``, ``kg``, ``text+kg``):
the central model (history mode) is trained on the item cold-start split of ml-100k (or ``--dataset``;
20% of items never seen in training; negatives from warm items only), once per variant of
:data:`COLD_VARIANTS`: the text tower alone (``no-id``), and with an ID residual (``id``) that
training drops DropoutNet-style at a rate (``id-drop0.5``, ``id-drop0.8``: ``model.id-dropout``), so
that the text part learns to carry an item without its residual, as a cold item is, and the ``fed``
preset's tower trained centrally (``cosine``: cosine scores, no item bias, as ``runs.central-fedmodel``).
A cold item's vector is the text part (its residual is untrained: zero), and it gets

* ``text``: that text vector, bias = mean warm bias;
* ``kg``: :func:`kg.neighbour_prior` over the warm items' trained vectors, the cold item having been
  inserted with :func:`kg.add_item` (catalogue metadata only) into a graph built from warm items;
  bias = its neighbours' weighted mean bias (the same prior, over the bias column);
* ``text+kg``: the better on the tuning half of ``alpha * text + (1 - alpha) * kg`` (vector and bias)
  and, for a variant with an ID residual, ``alpha * text + (1 - alpha) * kg + w * kg_id`` where
  ``kg_id`` is the same KG prior over the warm items' *ID residuals* (the collaborative part the text
  lacks; ``alpha`` 1: ``text + w * kg_id``);
* ``random``: seeded uniform scores.

Each vector is then normalised as the API stores a new item (unit length under cosine scores, else
at most the longest catalogue vector's length).

A constant bias shared by every cold item changes neither HR@10 (every candidate is cold) nor
Recall@20 (only cold items are ranked), so the text bias choice is immaterial. The cold *items* are
split by a seeded permutation into a *tuning* half and a *report* half (:func:`cold_item_halves`); a
user belongs to the half holding their latest cold interaction, which is ranked against up to 99
cold negatives re-sampled from that half; Recall@20 ranks that half's items (relevant: the user's
cold items in it). For each method, the variant, the prior's kind, the mix weight (alpha or ``w``),
the KG prior's neighbour cap, bias weight and renormalisation are chosen on the tuning half's items
and users only (HR@10, then Recall@20); every ``cold.<method>`` figure is measured on the report
half's. The provenance records every variant's tuning-half best of each method (and, for reference,
never read by a choice, its report-half figures). The user vector reads the user's warm training
items plus the validation item.
Each variant's trained model is cached in ``--work-dir`` (``cold-<dataset>-<variant>.pt``); five
trainings take about 13 minutes on ml-100k (2 threads).

``--parts cold-k1`` (``cold.k1``): the same protocol for one tower (:data:`COLD_K_VARIANT`) with
MiniLM's top layer fine-tuned (``fed-k1``'s LoRA), against its k = 0 twin (``cold.k1.k0_same_training``),
both trained with ``bench_core.K_TRAIN``. ``--parts cold-fed`` (``cold.fed``): the same protocol on
the best round of the federated ``fed-cold`` preset (``fedxrec bench fed --presets fed-cold``, the same
cold split), its users' vectors from their histories as the API serves them.

**Explanations** (``explain.*``): for every ml-100k P1 test user, the checkpoint's top-10 over
items not in the history (training items + validation item), explained by :class:`kg.PathExplainer`
(output equal to :func:`kg.explain_items`) with a cosine similarity of the checkpoint's item vectors,
then Fidelity@10, faithfulness, LIR, SEP, ETD (:mod:`kg.metrics`), how telling the explanations are
(``entity_share@10``: share of top-10 items whose first path goes through a person or a company;
``fidelity@10_specific``: Fidelity@10 without genre, decade and other coarse links;
``first_path_kinds``: the share of first paths of each kind of :data:`kg.schema.EXPLANATION_KINDS`,
and ``none``), counterfactual necessity (``pn_score``, ``pn_rank``: the history without the linking
item, rescored by :class:`shared.serving.ServingModel`), milliseconds to explain one user's top-10
(paths and sentences, not scoring), and an explanation-aware re-ranking of the top-50
(``explain.rerank.*``: its Fidelity@10, entity share, LIR/SEP/ETD and the full-ranking NDCG@10/HR@10
of the test item before and after), and the same re-ranking toward items whose first path goes
through a person or a company, at a few weights (``explain.rerank_entity``: entity share,
Fidelity@10 without coarse links and NDCG@10/HR@10 after; the before figures are ``rerank``'s).

Usage: ``fedxrec bench kg [--checkpoint PATH] [--dataset NAME] [--data-dir DIR] [--parts cold,explain,cold-k1,cold-fed]``
(or ``python -m simulations.bench_kg``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import kg
from kg.errors import NoNeighboursError
from kg.paths import PathScoring
from kg.schema import RELATION_WEIGHTS
from shared.central import train_central
from shared.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from shared.config import Config, DataConfig, ModelConfig, TrainConfig
from shared.data import Dataset, load_dataset
from shared.metrics import hit_rate, ndcg, rank_of_target, recall_at_k
from shared.model import Recommender
from shared.pipeline import _kg_kwargs, build_model, data_dir, prepare
from shared.serving import ServingModel, normalise_new
from shared.splits import Split, cached_split
from shared.training import eval_histories
from simulations import options
from simulations.results import provenance

log = logging.getLogger("fedxrec.bench_kg")

COLD_METHODS = ("random", "text", "kg", "text+kg")
#: the methods ``cold.k1`` and ``cold.fed`` report (for one tower each)
COLD_K_METHODS = ("text", "kg", "text+kg")
COLD_FRACTION = 0.2  # of the catalogue's items, never seen in training
ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
BIAS_WEIGHTS: tuple[float | None, ...] = (None, 0.25, 0.5, 0.75, 1.0, 1.5)
NEIGHBOUR_CAPS: tuple[int | None, ...] = (20, 50, 100, None)
RERANK_POOL = 50
#: Weights of the re-ranking toward items explained through a person or a company (``explain.rerank_entity``).
ENTITY_RERANK_WEIGHTS = (0.05, 0.1, 0.2, 0.3)


# ============================================================================================ cold


class _OutOfTime(Exception):
    pass


def budgeted_train(model: Recommender, split: Split, tcfg: TrainConfig, budget_s: float, name: str) -> dict[str, Any]:
    """:func:`train_central`, stopped after the first epoch that ends past ``budget_s`` seconds.

    The selection is train_central's (best validation HR@10 + NDCG@10); on a stop, the best epoch's
    weights are restored here. ``budget_s <= 0``: no limit.
    """
    t0 = time.perf_counter()
    best: dict[str, Any] = {"sel": -1.0}

    def on_epoch(epoch: int, point: dict[str, float]) -> None:
        log.info(
            "%s epoch %d loss %.4f val HR@10 %.4f NDCG@10 %.4f (%.0f s)",
            name,
            epoch,
            point["loss"],
            point["val_hr@10"],
            point["val_ndcg@10"],
            time.perf_counter() - t0,
        )
        sel = point["val_hr@10"] + point["val_ndcg@10"]
        if sel > best["sel"]:
            best.update(sel=sel, epoch=epoch, val=point["val_hr@10"], state=copy.deepcopy(model.state_dict()))
        best["epochs_run"] = epoch + 1
        if budget_s > 0 and time.perf_counter() - t0 > budget_s and epoch + 1 < tcfg.epochs:
            raise _OutOfTime

    try:
        res = train_central(model, split, tcfg, on_epoch=on_epoch)
        info: dict[str, Any] = {"best_epoch": res.best_epoch, "val_hr@10": res.val["hr@10"], "epochs_run": tcfg.epochs}
        info["test_hr@10"] = res.test["hr@10"]
    except _OutOfTime:
        model.load_state_dict(best["state"])
        info = {
            "best_epoch": best["epoch"],
            "val_hr@10": best["val"],
            "epochs_run": best["epochs_run"],
            "stopped": f"time budget {budget_s:.0f} s",
        }
    info["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("%s trained: %s", name, info)
    return info


@dataclasses.dataclass
class ColdModel:
    """What the cold benchmark needs of the trained model: vectors, biases, user vectors, scale."""

    vectors: np.ndarray  # (N, D) trained tower vectors of every catalogue row (cold rows: text only)
    bias: np.ndarray  # (N,) trained biases (cold rows: untrained zeros)
    users: np.ndarray  # (U, D) user vectors (personal + history summary of train + val items)
    scale: float
    info: dict[str, Any]
    residual: np.ndarray | None = None  # (N, D) trained ID residuals (cold rows: zeros); None without one
    score: str = "dot"  # model.score: how a new item's vector is normalised when served


def train_cold(
    cfg: Config, *, cache: Path | None, retrain: bool = False, budget_s: float = 0.0
) -> tuple[ColdModel, Split, Dataset]:
    """Train (or reload) the central model on the cold-start split and extract what is scored."""
    prep = prepare(cfg, progress=False)
    split = prep.split
    assert split.cold_items is not None, "cold_fraction must be > 0"
    model = build_model(cfg.model, prep, split.num_users, seed=cfg.train.seed)
    key = {
        "model": dataclasses.asdict(cfg.model),
        "train": dataclasses.asdict(cfg.train),
        "data": dataclasses.asdict(cfg.data),
    }
    info: dict[str, Any] = {}
    if cache is not None and cache.exists() and not retrain:
        saved = torch.load(cache, weights_only=False)
        if saved.get("key") == key:
            model.load_state_dict(saved["state"])
            info = saved["info"]
            log.info("cold: reusing the trained model in %s (%s)", cache, info)
    if not info:
        info = budgeted_train(model, split, cfg.train, budget_s, "cold")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "state": model.state_dict(), "info": info}, cache)
    cm = _extract(model, split)
    cm.info = info
    return cm, split, prep.dataset


@torch.no_grad()
def _extract(model: Recommender, split: Split) -> ColdModel:
    """Vectors, biases and user vectors; a cold row's vector is its text part (its ID residual is untrained)."""
    assert split.cold_items is not None
    model.eval()
    v, b = model.all_item_vectors()
    hist = torch.as_tensor(eval_histories(split, "test", model.cfg.history_len))  # warm train + val
    users = torch.arange(split.num_users)
    u = model.user(users, v[hist.clamp_min(0)], hist >= 0)
    residual = None
    if model.items.id_residual is not None:
        cold = torch.as_tensor(split.cold_items)
        text = model.items.text_vectors(cold)
        v[cold] = F.normalize(text, dim=-1) if model.cfg.score == "cosine" else text
        residual = model.items.id_residual.weight.detach().clone()  # (N, D)
        residual[cold] = 0.0
        residual = residual.numpy()
    return ColdModel(v.numpy(), b.numpy(), u.numpy(), float(model.scale), {}, residual, model.cfg.score)


def cold_graph(ds: Dataset, cold_rows: np.ndarray) -> Any:
    """The KG of the warm catalogue, then every cold item inserted with :func:`kg.add_item`."""
    cold = set(cold_rows.tolist())
    items = ds.catalogue.items
    graph = kg.build_graph([it for r, it in enumerate(items) if r not in cold])
    for r in sorted(cold):
        kg.add_item(graph, items[r])  # catalogue metadata only: title, year, genres, entities
    return graph


def kg_priors(
    graph: Any,
    ds: Dataset,
    cm: ColdModel,
    cold_rows: np.ndarray,
    warm_rows: np.ndarray,
    *,
    max_neighbours: int | None,
    weights: Mapping[str, float] = RELATION_WEIGHTS,
    vectors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """KG prior vectors (C, D') and biases (C,) of the cold rows, and how many fell back.

    Vector and bias come out of one :func:`kg.neighbour_prior` call over ``[vectors | bias]`` of the
    warm items, so the bias is the neighbours' weighted mean bias with the same weights. ``vectors``
    (N, D'): what is averaged (default ``cm.vectors``; e.g. the ID residuals); a cold item without a
    warm neighbour falls back to its own row of it and the mean warm bias.
    """
    vectors = cm.vectors if vectors is None else vectors
    ids = ds.catalogue.ids
    table = np.concatenate([vectors[warm_rows], cm.bias[warm_rows, None]], axis=1)
    row_of = {ids[r]: j for j, r in enumerate(warm_rows.tolist())}
    mean_bias = float(cm.bias[warm_rows].mean())
    vecs = np.empty((len(cold_rows), vectors.shape[1]), np.float32)
    bias = np.empty(len(cold_rows), np.float32)
    fallback = 0
    for j, r in enumerate(cold_rows.tolist()):
        try:
            p = kg.neighbour_prior(graph, ids[r], table, row_of, weights=weights, max_neighbours=max_neighbours)
            vecs[j], bias[j] = p[:-1], p[-1]
        except NoNeighboursError:
            vecs[j], bias[j] = vectors[r], mean_bias
            fallback += 1
    return vecs, bias, fallback


@dataclasses.dataclass
class ColdEval:
    """Per-user scoring of a set of cold items: HR@10 candidates and full ranking over that set.

    ``cold_rows`` are the scored items (the columns of the vectors given to :meth:`per_user`);
    ``negatives`` (B, K) the candidates ranked against each user's target (default: the split's 99
    test negatives, which must then lie in ``cold_rows``).
    """

    split: Split
    cm: ColdModel
    cold_rows: np.ndarray  # (C,)
    users: np.ndarray  # user positions whose cold test item is in cold_rows
    negatives: np.ndarray | None = None  # (B, K) rows

    def __post_init__(self) -> None:
        col = {r: j for j, r in enumerate(self.cold_rows.tolist())}
        s = self.split
        negs = s.test_negatives[self.users] if self.negatives is None else self.negatives
        self.cand = np.array(
            [[col[int(s.test[u])], *[col[int(x)] for x in n]] for u, n in zip(self.users.tolist(), negs, strict=True)]
        )  # (B, 1 + K) columns into the cold table, target first
        assert s.seen is not None
        self.relevant = [np.array([col[x] for x in s.seen[u].tolist() if x in col]) for u in self.users.tolist()]

    def per_user(self, vecs: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hits@10 (B,) and Recall@20 (B,) for cold vectors (C, D) and biases (C,)."""
        scores = self.cm.scale * self.cm.users[self.users] @ vecs.T + bias  # (B, C)
        return self.per_user_scores(scores)

    def per_user_scores(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ranks = rank_of_target(np.take_along_axis(scores, self.cand, axis=1), 0)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :20]
        recall = np.array([recall_at_k(top[i : i + 1], [rel], 20) for i, rel in enumerate(self.relevant)])
        return (ranks < 10).astype(float), recall


@dataclasses.dataclass
class ColdHalf:
    """One half of the cold items: its rows, their columns in the cold table, and its users' candidates."""

    rows: np.ndarray  # (C_h,) catalogue rows
    cols: np.ndarray  # (C_h,) positions of ``rows`` in the sorted cold rows
    users: np.ndarray  # users whose cold test item is one of ``rows``
    negatives: np.ndarray  # (B, K) rows of ``rows`` each user never interacted with


def cold_item_halves(split: Split, cold_rows: np.ndarray, seed: int, k: int = 99) -> tuple[ColdHalf, ColdHalf]:
    """Split the cold items (not the users) by a seeded permutation into a tuning and a report half.

    A user belongs to the half holding their cold test item; their negatives are re-sampled (seeded)
    from that half's items they never interacted with, ``min(k, fewest available)`` for every user
    of the half, so no choice made on one half ever sees the other half's items.
    """
    assert split.seen is not None
    rng = np.random.default_rng([seed, 1])
    perm = rng.permutation(len(cold_rows))
    halves = []
    for cols in (np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])):
        rows = cold_rows[cols]
        in_half = np.zeros(split.num_items, bool)
        in_half[rows] = True
        users = np.flatnonzero((split.test >= 0) & in_half[np.maximum(split.test, 0)])
        pools = [np.setdiff1d(rows, split.seen[u]) for u in users.tolist()]
        n = min(k, *(len(p) for p in pools)) if pools else k
        negatives = np.stack([rng.choice(p, size=n, replace=False) for p in pools]) if pools else np.zeros((0, n), int)
        halves.append(ColdHalf(rows, cols, users, negatives))
    return halves[0], halves[1]


@dataclasses.dataclass(frozen=True)
class ColdVariant:
    """One way of training the tower for the cold benchmark; the tuning half chooses among them."""

    name: str
    id_residual: bool = False
    #: DropoutNet rate of the ID residual in training (:attr:`shared.config.ModelConfig.id_dropout`)
    id_dropout: float = 0.0
    #: ``model.score`` and ``model.item-bias``
    score: str = "dot"
    item_bias: bool = True


#: the trained variants: text tower alone, with an ID residual dropped in training at a few rates, and
#: the ``fed`` preset's tower (cosine scores, no item bias: ``runs.central-fedmodel``'s model)
COLD_VARIANTS = (
    ColdVariant("no-id"),
    ColdVariant("id", id_residual=True),
    ColdVariant("id-drop0.5", id_residual=True, id_dropout=0.5),
    ColdVariant("id-drop0.8", id_residual=True, id_dropout=0.8),
    ColdVariant("cosine", score="cosine", item_bias=False),
)
#: weights of the KG prior over the warm items' ID residuals added to a cold item's text vector
RESIDUAL_WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
#: text shares tried with the residual prior (1.0: text + w * kg_id; below: mixed with the full-vector prior)
RESIDUAL_ALPHAS = (0.25, 0.5, 0.75, 1.0)


class ColdScorer:
    """Cold items' vectors (C, D) and biases (C,) of one trained variant, for a dict of knobs.

    ``prior``: ``none`` (the text vector), ``full`` (``alpha * text + (1 - alpha) * kg``, the KG prior
    over the warm items' vectors, optionally renormalised) or ``residual`` (``alpha * text + (1 - alpha)
    * kg + weight * kg_id``, with ``kg_id`` the KG prior over the warm items' ID residuals: the
    collaborative part the text lacks; ``alpha`` 1: ``text + weight * kg_id``). The bias: the alpha mix
    of text and KG biases (``bias_weight`` None) or ``bias_weight * kg bias``. Every vector is then
    normalised as the API serves a new item (:func:`shared.serving.normalise_new`): unit
    length under cosine scores, else shortened to the longest catalogue vector.
    """

    def __init__(self, cm: ColdModel, graph: Any, ds: Dataset, cold_rows: np.ndarray, warm_rows: np.ndarray) -> None:
        self.text_v = cm.vectors[cold_rows]  # (C, D)
        self.text_b = np.full(len(cold_rows), float(cm.bias[warm_rows].mean()), np.float32)
        self.warm_norm = float(np.linalg.norm(cm.vectors[warm_rows], axis=1).mean())
        self.score = cm.score
        self.max_norm = float(np.linalg.norm(cm.vectors, axis=1).max())
        d = cm.vectors.shape[1]
        table = cm.vectors if cm.residual is None else np.concatenate([cm.vectors, cm.residual], axis=1)
        self.priors: dict[int | None, tuple[np.ndarray, np.ndarray, int]] = {}
        self.residual_priors: dict[int | None, np.ndarray] = {}
        for cap in NEIGHBOUR_CAPS:  # one pass per cap over [vectors | residuals | bias]
            v, b, fallback = kg_priors(graph, ds, cm, cold_rows, warm_rows, max_neighbours=cap, vectors=table)
            self.priors[cap] = (v[:, :d], b, fallback)
            if cm.residual is not None:
                self.residual_priors[cap] = v[:, d:]

    def grid(self) -> list[dict[str, Any]]:
        """Every knob setting tried on the tuning half."""
        out: list[dict[str, Any]] = [{"prior": "none"}]
        for cap in NEIGHBOUR_CAPS:
            for lam in BIAS_WEIGHTS:
                for renorm in (False, True):
                    out += [
                        {"prior": "full", "alpha": a, "max_neighbours": cap, "bias_weight": lam, "renorm": renorm}
                        for a in ALPHAS
                    ]
                if self.residual_priors:
                    out += [
                        {"prior": "residual", "alpha": a, "weight": w, "max_neighbours": cap, "bias_weight": lam}
                        for a in RESIDUAL_ALPHAS
                        for w in RESIDUAL_WEIGHTS
                    ]
        return out

    def __call__(self, knobs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        v, b = self._mix(knobs)
        return normalise_new(v, self.score, self.max_norm), b  # as the API stores a new item

    def _mix(self, knobs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if knobs["prior"] == "none":
            return self.text_v, self.text_b
        kv, kb, _ = self.priors[knobs["max_neighbours"]]
        lam = knobs["bias_weight"]
        a = knobs["alpha"]
        if knobs["prior"] == "residual":
            b = a * self.text_b + (1 - a) * kb if lam is None else lam * kb
            kr = self.residual_priors[knobs["max_neighbours"]]
            return a * self.text_v + (1 - a) * kv + knobs["weight"] * kr, b
        if knobs["renorm"]:  # a weighted mean of many neighbours shrinks towards their centroid
            kv = kv * (self.warm_norm / np.maximum(np.linalg.norm(kv, axis=1, keepdims=True), 1e-12))
        b = a * self.text_b + (1 - a) * kb if lam is None else lam * kb
        return a * self.text_v + (1 - a) * kv, b


def _figures(ev: ColdEval, half: ColdHalf, v: np.ndarray, b: np.ndarray) -> dict[str, float]:
    h, r = ev.per_user(v[half.cols], b[half.cols])
    return {"hr@10": round(float(h.mean()), 4), "recall@20": round(float(r.mean()), 4)}


def _is_kg_only(knobs: Mapping[str, Any]) -> bool:
    return knobs["prior"] == "full" and knobs["alpha"] == 0.0 and knobs["bias_weight"] is None


def tune_cold(scorer: ColdScorer, tune: ColdEval, half: ColdHalf) -> dict[str, dict[str, Any]]:
    """The best knobs of each method (``text``, ``kg``, ``text+kg``) by tuning-half HR@10 (then Recall@20).

    ``kg``: the full-vector prior alone (alpha 0, its own bias); ``text+kg``: any knob setting.
    """
    tried = [{**k, **_figures(tune, half, *scorer(k))} for k in scorer.grid()]
    for g in tried:
        log.debug("cold tuning half: %s", g)

    def best(cands: list[dict[str, Any]]) -> dict[str, Any]:
        return max(cands, key=lambda g: (g["hr@10"], g["recall@20"]))

    out = {
        "text": tried[0],
        "kg": best([g for g in tried if _is_kg_only(g)]),
        "text+kg": best(tried),
        "text+kg_full_prior": best([g for g in tried if g["prior"] == "full"]),
    }
    if scorer.residual_priors:
        out["text+kg_residual_prior"] = best([g for g in tried if g["prior"] == "residual"])
    return out


def _knobs(fig: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fig.items() if k not in ("hr@10", "recall@20")}


@dataclasses.dataclass
class _ColdSetup:
    """What every tower of one cold-start benchmark shares: the split, the warm graph, the two halves."""

    split: Split
    graph: Any
    cold_rows: np.ndarray
    warm_rows: np.ndarray
    tune_half: ColdHalf
    report_half: ColdHalf


def _cold_data(args: argparse.Namespace) -> DataConfig:
    return DataConfig(dataset=args.dataset, dir=args.data_dir, cache_dir=args.cache_dir, cold_fraction=COLD_FRACTION)


def _cold_tower(
    args: argparse.Namespace, name: str, model: ModelConfig, train: TrainConfig, setup: _ColdSetup | None
) -> tuple[dict[str, Any], ColdScorer, _ColdSetup]:
    """Train (or reload) one tower on the cold split and choose each method's knobs on the tuning half."""
    cm, split, ds = train_cold(
        Config(data=_cold_data(args), model=model, train=train),
        cache=Path(args.work_dir) / f"cold-{args.dataset}-{name}.pt",
        retrain=args.retrain,
        budget_s=60 * args.budget_min,
    )
    return _tune_tower(args, name, model, cm, split, ds, setup)


def _tune_tower(
    args: argparse.Namespace,
    name: str,
    model: ModelConfig,
    cm: ColdModel,
    split: Split,
    ds: Dataset,
    setup: _ColdSetup | None,
) -> tuple[dict[str, Any], ColdScorer, _ColdSetup]:
    """Each method's knobs for one trained tower, chosen on the tuning half (``setup``: built if None)."""
    assert split.cold_items is not None
    if setup is None:  # the same split, graph and halves for every tower
        cold_rows = np.sort(split.cold_items)
        is_cold = np.zeros(split.num_items, bool)
        is_cold[cold_rows] = True
        tune_half, report_half = cold_item_halves(split, cold_rows, args.seed)
        setup = _ColdSetup(
            split, cold_graph(ds, cold_rows), cold_rows, np.flatnonzero(~is_cold), tune_half, report_half
        )
    tune = ColdEval(split, cm, setup.tune_half.rows, setup.tune_half.users, setup.tune_half.negatives)
    scorer = ColdScorer(cm, setup.graph, ds, setup.cold_rows, setup.warm_rows)
    best = tune_cold(scorer, tune, setup.tune_half)  # ---- choices made on the tuning half only
    log.info("cold %s, chosen on the tuning half: %s", name, best)
    var = {
        "model": dataclasses.asdict(model),
        "training": cm.info,
        "kg_fallback_to_text": scorer.priors[None][2],
        "tuning_half": best,
        "cm": cm,
    }
    return var, scorer, setup


def _report_figures(setup: _ColdSetup, tower: dict[str, Any], scorer: ColdScorer) -> dict[str, Any]:
    """Each of :data:`COLD_K_METHODS` at its tuning-half knobs, on the report half (the tower's model leaves it)."""
    half = setup.report_half
    ev = ColdEval(setup.split, tower.pop("cm"), half.rows, half.users, half.negatives)
    return {m: _figures(ev, half, *scorer(tower["tuning_half"][m])) for m in COLD_K_METHODS}


def run_cold(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    train = TrainConfig(epochs=args.cold_epochs, seed=0)
    variants: dict[str, dict[str, Any]] = {}
    scorers: dict[str, ColdScorer] = {}
    setup: _ColdSetup | None = None
    for spec in COLD_VARIANTS:
        model = ModelConfig(
            backbone=args.backbone,
            id_residual=spec.id_residual,
            id_dropout=spec.id_dropout,
            user_mode="history",
            score=spec.score,
            item_bias=spec.item_bias,
        )
        variants[spec.name], scorers[spec.name], setup = _cold_tower(args, spec.name, model, train, setup)
    assert setup is not None
    split, tune_half, report_half = setup.split, setup.tune_half, setup.report_half

    # ---- each method's variant, chosen on the tuning half too
    chosen = {
        m: max(
            variants,
            key=lambda n, m=m: (variants[n]["tuning_half"][m]["hr@10"], variants[n]["tuning_half"][m]["recall@20"]),
        )
        for m in ("text", "kg", "text+kg")
    }
    log.info("cold: variants chosen on the tuning half: %s", chosen)

    # ---- figures on the report half
    def report_eval(name: str) -> ColdEval:
        return ColdEval(split, variants[name]["cm"], report_half.rows, report_half.users, report_half.negatives)

    rng = np.random.default_rng(args.seed)
    out: dict[str, Any] = {}
    h, r = report_eval(chosen["text"]).per_user_scores(rng.random((len(report_half.users), len(report_half.rows))))
    out["random"] = {"hr@10": round(float(h.mean()), 4), "recall@20": round(float(r.mean()), 4)}
    for m, name in chosen.items():
        out[m] = _figures(report_eval(name), report_half, *scorers[name](variants[name]["tuning_half"][m]))
    # for reference only, never read by a choice: every variant's report-half figures at its tuned knobs
    for name, var in variants.items():
        ev = report_eval(name)
        var["report_half_reference"] = {
            m: _figures(ev, report_half, *scorers[name](_knobs(best))) for m, best in var["tuning_half"].items()
        }
    # for reference only (not the reported protocol): every test user against the split's 99 negatives
    # over all cold items, with the choices made on the tuning half
    test_users = np.flatnonzero(split.test >= 0)
    ref = {}
    for m, name in chosen.items():
        all_users = ColdEval(split, variants[name]["cm"], np.sort(split.cold_items), test_users)
        ref[m] = round(float(all_users.per_user(*scorers[name](variants[name]["tuning_half"][m]))[0].mean()), 4)
    for var in variants.values():
        del var["cm"]
    best_mix = variants[chosen["text+kg"]]["tuning_half"]["text+kg"]
    settings = {
        "variants": variants,
        "chosen_variant": chosen,
        "chosen_knobs": {m: _knobs(variants[n]["tuning_half"][m]) for m, n in chosen.items()},
        "train": dataclasses.asdict(train),
        "cold_fraction": COLD_FRACTION,
        "text_bias": "mean warm bias (immaterial: constant over cold items)",
        "kg_bias": "neighbours' weighted mean bias",
        "kg_weights": dict(RELATION_WEIGHTS),
        "cold_item_vector": "text part of the tower (an ID residual, untrained for a cold item, is zero)",
        "priors": {
            "full": "alpha * text + (1 - alpha) * KG prior over warm items' full vectors (optionally renormalised "
            "to the mean warm norm)",
            "residual": "alpha * text + (1 - alpha) * the full prior + weight * KG prior over warm items' ID "
            "residuals (alpha 1: text + weight * the residual prior)",
            "none": "text",
        },
        "grid": {
            "alpha": list(ALPHAS),
            "residual_weight": list(RESIDUAL_WEIGHTS),
            "residual_alpha": list(RESIDUAL_ALPHAS),
            "max_neighbours": list(NEIGHBOUR_CAPS),
            "bias_weight": list(BIAS_WEIGHTS),
            "renorm": [False, True],
        },
        "mix_bias": "alpha-mix of text and kg biases (residual prior: the constant text bias)"
        if best_mix["bias_weight"] is None
        else f"{best_mix['bias_weight']} x kg bias (text bias is a constant)",
        "tuning": "the variant (trained tower) and the knobs of each method (prior kind, alpha or residual weight, "
        "neighbour cap, bias weight, renorm) chosen by HR@10 (then Recall@20) on a seeded half of the cold items "
        "(its users: those whose cold test item is in it; negatives from that half only); every figure is on the "
        "other half's items and users (variants.*.report_half_reference: each variant's, never used to choose)",
        "users": {"tuning": len(tune_half.users), "report": len(report_half.users)},
        "cold_items": {"all": len(split.cold_items), "tuning": len(tune_half.rows), "report": len(report_half.rows)},
        "negatives_per_user": {
            "tuning": int(tune_half.negatives.shape[1]),
            "report": int(report_half.negatives.shape[1]),
        },
        "hr@10_all_test_users_reference": ref,
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": args.seed,
    }
    out["provenance"] = provenance(settings)
    log.info("cold figures: %s", {k: v for k, v in out.items() if k != "provenance"})
    return out


#: The tower of ``cold.k1`` (and of its k = 0 twin): :data:`COLD_VARIANTS`' ``id`` (an ID residual, not
#: dropped), the variant the k = 0 run chose on its tuning half for ``text`` and ``text+kg``.
COLD_K_VARIANT = "id"


def run_cold_k(args: argparse.Namespace) -> dict[str, Any]:
    """``cold.k1``: the cold-start figures of a tower with MiniLM's top layer fine-tuned, against k = 0.

    Both towers are :data:`COLD_K_VARIANT` trained alike on the cold split (``bench_core.K_TRAIN``: a
    k >= 1 step computes every catalogue item through the top layer, so a large batch and few epochs),
    k = 1 with ``fed-k1``'s LoRA top layer (``bench_core.k_model``); each method's knobs are chosen on
    the tuning half, every figure is on the report half, as for ``cold.*``. ``hr@10`` is ``text+kg``'s.
    """
    from simulations.bench_core import K_TRAIN, k_model  # the k comparison's own settings

    t0 = time.perf_counter()
    var = next(v for v in COLD_VARIANTS if v.name == COLD_K_VARIANT)
    base = ModelConfig(
        backbone=args.backbone, id_residual=var.id_residual, id_dropout=var.id_dropout, user_mode="history"
    )
    train = dataclasses.replace(TrainConfig(seed=0), **K_TRAIN)
    setup: _ColdSetup | None = None
    figures: dict[int, dict[str, Any]] = {}
    towers: dict[str, Any] = {}
    for k in (0, 1):
        name = f"{COLD_K_VARIANT}-k{k}-b{train.batch_size}-e{train.epochs}"
        tower, scorer, setup = _cold_tower(args, name, k_model(base, k), train, setup)
        figures[k] = _report_figures(setup, tower, scorer)
        towers[f"k{k}"] = tower
        log.info("cold k=%d figures on the report half: %s", k, figures[k])
    assert setup is not None
    out: dict[str, Any] = {**figures[1], "hr@10": figures[1]["text+kg"]["hr@10"], "k0_same_training": figures[0]}
    settings = {
        "towers": towers,
        "variant": COLD_K_VARIANT,
        "train": dataclasses.asdict(train),
        "cold_fraction": COLD_FRACTION,
        "about": "the cold-start benchmark (cold.*) for one tower at model.top-layers = 1 (fed-k1's LoRA top layer) "
        "and the same tower at k = 0, both trained with bench_core.K_TRAIN; knobs chosen on the tuning half, "
        "figures on the report half; k0_same_training: the k = 0 twin (cold.*: k = 0 at its own 15-epoch training)",
        "users": {"tuning": len(setup.tune_half.users), "report": len(setup.report_half.users)},
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": args.seed,
    }
    out["provenance"] = provenance(settings)
    log.info("cold k1 figures: %s", {k: v for k, v in out.items() if k != "provenance"})
    return out


#: the federated preset whose best round ``cold.fed`` scores (trained on the same cold split)
COLD_FED_PRESET = "fed-cold"


def cold_from_checkpoint(ckpt: Checkpoint, split: Split, where: Path) -> ColdModel:
    """A federated checkpoint as the cold benchmark scores it, as the API would serve it.

    Its item vectors (a cold row's is the text tower's: the run never trained on it) and biases, and
    each user's history-only vector (train items + validation item) by :class:`ServingModel` (the
    personal vector stays on the device). The checkpoint must have trained on this cold split, without
    an ID residual (a cold row's would be untrained, and is fused into the saved vectors).
    """
    settings = ckpt.meta.get("settings", {})
    assert split.cold_items is not None
    want = {"data.cold-fraction": COLD_FRACTION, "data.split-seed": 0}
    for key, value in want.items():
        if key not in settings:
            raise CheckpointError(f"{where}: its settings do not record {key} (made before they did: rerun it)")
        if settings[key] != value:
            raise CheckpointError(
                f"{where}: trained with {key} = {settings[key]}, the cold benchmark's split needs {value}"
            )
    if ckpt.config.id_residual:
        raise CheckpointError(f"{where}: has an ID residual (model.id-residual): a cold row's would be untrained")
    if len(ckpt.item_ids) != split.num_items:
        raise CheckpointError(f"{where}: {len(ckpt.item_ids)} items, the dataset has {split.num_items}")
    serving = ServingModel(ckpt)
    users = np.stack(
        [
            serving.user_vector(np.append(split.train[u], split.val[u]) if split.val[u] >= 0 else split.train[u])
            for u in range(split.num_users)
        ]
    ).astype(np.float32)
    meta = {"checkpoint": str(where), **ckpt.meta}
    return ColdModel(serving.vectors, serving.bias, users, serving.scale, meta, score=ckpt.config.score)


def run_cold_fed(args: argparse.Namespace) -> dict[str, Any]:
    """``cold.fed``: the cold-start benchmark (``cold.*``'s protocol and halves) on a federated checkpoint."""
    t0 = time.perf_counter()
    where = Path(args.cold_checkpoint or options.preset_checkpoint(COLD_FED_PRESET, args.dataset))
    if not (where / "fedxrec.json").exists():
        raise CheckpointError(
            f"{where}: no checkpoint; train it with fedxrec bench fed --presets {COLD_FED_PRESET}"
            + ("" if args.dataset == "ml-100k" else f" --dataset {args.dataset}")
        )
    ckpt = load_checkpoint(where)
    prep = prepare(Config(data=_cold_data(args), model=ckpt.config), progress=False)
    cm = cold_from_checkpoint(ckpt, prep.split, where)
    tower, scorer, setup = _tune_tower(args, "fed", ckpt.config, cm, prep.split, prep.dataset, None)
    out: dict[str, Any] = _report_figures(setup, tower, scorer)
    settings = {
        "checkpoint": str(where),
        "checkpoint_meta": {k: v for k, v in ckpt.meta.items() if k != "settings"},
        "tower": tower,
        "cold_fraction": COLD_FRACTION,
        "users_vectors": "ServingModel.user_vector of train items + validation item (history only, as served)",
        "about": "cold.*'s protocol (knobs on the tuning half, figures on the report half) on the best round of "
        f"the {COLD_FED_PRESET} preset, trained federated on the same cold split",
        "users": {"tuning": len(setup.tune_half.users), "report": len(setup.report_half.users)},
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": args.seed,
    }
    out["provenance"] = provenance(settings)
    log.info("cold fed figures: %s", {k: v for k, v in out.items() if k != "provenance"})
    return out


# ====================================================================================== explain


def train_checkpoint(args: argparse.Namespace, path: Path) -> None:
    """Train the central model (P1 split, default settings) and save it to ``path``."""
    cfg = Config(
        data=DataConfig(dataset=args.dataset, dir=args.data_dir, cache_dir=args.cache_dir),
        model=ModelConfig(backbone=args.backbone),
        train=TrainConfig(epochs=args.epochs),
    )
    prep = prepare(cfg, progress=False)
    model = build_model(cfg.model, prep, prep.split.num_users, seed=cfg.train.seed)
    res = train_central(
        model,
        prep.split,
        cfg.train,
        on_epoch=lambda e, p: log.info("central epoch %d val HR@10 %.4f", e, p["val_hr@10"]),
    )
    save_checkpoint(model, prep.dataset.catalogue.ids, path, meta={"run": "central (bench_kg)", **res.summary()})
    log.info("central checkpoint saved to %s: %s", path, res.summary())


def user_histories(ds: Dataset, split: Split) -> list[tuple[list[int], list[float]]]:
    """Per split user: history ids (train + val, time order) and their timestamps."""
    inter = ds.interactions
    ts_of: dict[tuple[int, int], int] = {}
    for u, r, t in zip(inter.users.tolist(), inter.items.tolist(), inter.timestamps.tolist(), strict=True):
        ts_of[(u, r)] = max(t, ts_of.get((u, r), t))
    ids = ds.catalogue.ids
    out = []
    for p, u in enumerate(split.users.tolist()):
        rows = split.train[p].tolist()
        ts = [float(t) for t in split.train_ts[p].tolist()]
        if split.val[p] >= 0:
            rows.append(int(split.val[p]))
            ts.append(float(ts_of[(u, int(split.val[p]))]))
        out.append(([ids[r] for r in rows], ts))
    return out


def _mean(values: Sequence[float]) -> float:
    return round(float(np.mean(values)), 4) if len(values) else 0.0


def run_explain(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    ckpt_path = Path(args.checkpoint) if args.checkpoint else options.default_checkpoint(args.dataset)
    if not (ckpt_path / "fedxrec.json").exists():
        if not args.train_if_missing:
            raise SystemExit(
                f"no checkpoint at {ckpt_path} (run `fedxrec central --dataset {args.dataset}`, or --train-if-missing)"
            )
        train_checkpoint(args, ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    sm = ServingModel(ckpt)
    dcfg = DataConfig(dataset=args.dataset, dir=args.data_dir, cache_dir=args.cache_dir)
    ds = load_dataset(dcfg.dataset, data_dir(dcfg), **_kg_kwargs(dcfg))
    if sm.item_ids != ds.catalogue.ids:
        raise SystemExit("checkpoint catalogue differs from the dataset's")
    split = cached_split(ds.interactions, len(ds.catalogue), dcfg.cache_dir, seed=dcfg.split_seed)
    graph = kg.build_graph(ds.catalogue.items)
    table = kg.sep_table(graph)
    ids = np.array(ds.catalogue.ids)
    unit = sm.vectors / np.maximum(np.linalg.norm(sm.vectors, axis=1, keepdims=True), 1e-12)
    row_of = sm.row_of

    def sim(a: int, b: int) -> float:
        return float(unit[row_of[a]] @ unit[row_of[b]])

    def scorer(history: list[int], items: list[int]) -> np.ndarray:
        return sm.scores(sm.rows(history), sm.rows(items))

    scoring = PathScoring(
        recency_weight=args.recency_weight,
        similarity_weight=args.similarity_weight,
        popularity_share=args.popularity_share,
    )
    hists = user_histories(ds, split)
    # paths start from the history items the model reads (its latest history_len), so that an
    # explanation never cites an item without influence on the score; metrics use the full history
    window = args.explain_window if args.explain_window > 0 else sm.cfg.history_len
    users = range(split.num_users) if args.max_users <= 0 else range(min(args.max_users, split.num_users))
    metric_keys = ("fidelity", "fidelity_specific", "entity_share", "faithfulness", "lir", "sep", "etd")
    acc: dict[str, list[float]] = {k: [] for k in (*metric_keys, "pn_score", "pn_rank")}
    kinds: dict[str, list[float]] = {}
    rr_keys = ("fidelity", "fidelity_specific", "entity_share", "lir", "sep", "etd")
    rr: dict[str, list[float]] = {
        k: [] for k in (*rr_keys, "ndcg_before", "ndcg_after", "hr_before", "hr_after", "ndcg_served", "hr_served")
    }
    re_keys = ("entity_share", "fidelity_specific", "ndcg_after", "hr_after")
    re_entity: dict[float, dict[str, list[float]]] = {w: {k: [] for k in re_keys} for w in ENTITY_RERANK_WEIGHTS}
    ms: list[float] = []
    cpu_ms: list[float] = []
    explainer = kg.PathExplainer(graph, scoring)  # the serving explainer: same output as kg.explain_items
    served_rr: dict[str, list[float]] = {k: [] for k in ("entity_share", "fidelity", "fidelity_specific")}
    for p in users:
        history, ts = hists[p]
        h_rows = sm.rows(history)
        top_rows, top_scores = sm.top_k(h_rows, RERANK_POOL, exclude=h_rows)
        top_ids = ids[top_rows].tolist()
        # what the API does (server.api.service): explain the top-50, re-rank it toward items explained
        # through a person or a company (FEDXREC_ENTITY_RERANK), keep the top-10
        t, c = time.perf_counter(), time.process_time()
        pool = explainer.explain(history[-window:], top_ids, timestamps=ts[-window:], sim=sim)
        by_item = {e.item_id: e for e in pool}
        served = (
            kg.toward_entities(top_ids, top_scores, by_item, history=history, weight=args.entity_rerank)
            if args.entity_rerank
            else top_ids
        )
        exps = [by_item[i] for i in served[:10]]
        ms.append(1000 * (time.perf_counter() - t))
        cpu_ms.append(1000 * (time.process_time() - c))
        m = kg.explanation_metrics(graph, exps, history, ts, sep_values=table)
        for k, v in m.items():
            acc[k].append(v)
        for kind, share in kg.first_path_kinds(exps).items():
            kinds.setdefault(kind, []).append(share)
        acc["pn_score"].append(kg.pn_score(exps, history, scorer))
        hist_set = set(history)
        candidates = [i for i in ds.catalogue.ids if i not in hist_set]
        acc["pn_rank"].append(kg.pn_rank(exps, history, scorer, candidates))
        model_exps = pool[:10]  # the model's own order
        served_rr["entity_share"].append(kg.entity_share(model_exps))
        served_rr["fidelity"].append(kg.fidelity(model_exps))
        served_rr["fidelity_specific"].append(kg.fidelity_specific(model_exps))
        order = kg.rerank(
            top_ids, top_scores, by_item, history=history, sep_values=table, weight=args.rerank_weight, timestamps=ts
        )
        re_exps = [by_item[i] for i in order[:10]]
        rm = kg.explanation_metrics(graph, re_exps, history, ts, sep_values=table)
        for k in rr_keys:
            rr[k].append(rm[k])
        test_id = int(ids[split.test[p]])
        before = top_ids.index(test_id) if test_id in top_ids[:10] else 10
        after = order.index(test_id) if test_id in order[:10] else 10
        at_served = served.index(test_id) if test_id in served[:10] else 10
        rr["ndcg_before"].append(ndcg(np.array([before]), 10))
        rr["ndcg_after"].append(ndcg(np.array([after]), 10))
        rr["hr_before"].append(hit_rate(np.array([before]), 10))
        rr["hr_after"].append(hit_rate(np.array([after]), 10))
        rr["ndcg_served"].append(ndcg(np.array([at_served]), 10))
        rr["hr_served"].append(hit_rate(np.array([at_served]), 10))
        for w, acc_w in re_entity.items():
            toward = kg.toward_entities(top_ids, top_scores, by_item, history=history, weight=w)
            toward_exps = [by_item[i] for i in toward[:10]]
            acc_w["entity_share"].append(kg.entity_share(toward_exps))
            acc_w["fidelity_specific"].append(kg.fidelity_specific(toward_exps))
            rank = toward.index(test_id) if test_id in toward[:10] else 10
            acc_w["ndcg_after"].append(ndcg(np.array([rank]), 10))
            acc_w["hr_after"].append(hit_rate(np.array([rank]), 10))
    out: dict[str, Any] = {
        "fidelity@10": _mean(acc["fidelity"]),
        "fidelity@10_specific": _mean(acc["fidelity_specific"]),
        "entity_share@10": _mean(acc["entity_share"]),
        "first_path_kinds": {kind: _mean(v) for kind, v in kinds.items()},
        "faithfulness": _mean(acc["faithfulness"]),
        "lir": _mean(acc["lir"]),
        "sep": _mean(acc["sep"]),
        "etd": _mean(acc["etd"]),
        "pn_score": _mean(acc["pn_score"]),
        "pn_rank": _mean(acc["pn_rank"]),
        "ms_per_user": round(float(np.mean(ms)), 3),
        "ms_per_user_cpu": round(float(np.mean(cpu_ms)), 3),
        "users": len(ms),
        "served_order": {
            "entity_rerank": args.entity_rerank,
            "pool": RERANK_POOL,
            "ndcg@10_model": _mean(rr["ndcg_before"]),
            "ndcg@10_served": _mean(rr["ndcg_served"]),
            "hr@10_model": _mean(rr["hr_before"]),
            "hr@10_served": _mean(rr["hr_served"]),
            "model_order_entity_share@10": _mean(served_rr["entity_share"]),
            "model_order_fidelity@10": _mean(served_rr["fidelity"]),
            "model_order_fidelity@10_specific": _mean(served_rr["fidelity_specific"]),
        },
        "rerank": {
            "weight": args.rerank_weight,
            "pool": RERANK_POOL,
            "fidelity@10": _mean(rr["fidelity"]),
            "fidelity@10_specific": _mean(rr["fidelity_specific"]),
            "entity_share@10": _mean(rr["entity_share"]),
            "lir": _mean(rr["lir"]),
            "sep": _mean(rr["sep"]),
            "etd": _mean(rr["etd"]),
            "ndcg@10_before": _mean(rr["ndcg_before"]),
            "ndcg@10_after": _mean(rr["ndcg_after"]),
            "hr@10_before": _mean(rr["hr_before"]),
            "hr@10_after": _mean(rr["hr_after"]),
        },
        "rerank_entity": [
            {
                "weight": w,
                "entity_share@10": _mean(a["entity_share"]),
                "fidelity@10_specific": _mean(a["fidelity_specific"]),
                "ndcg@10_after": _mean(a["ndcg_after"]),
                "hr@10_after": _mean(a["hr_after"]),
            }
            for w, a in re_entity.items()
        ],
    }
    settings = {
        "checkpoint": str(ckpt_path),
        "checkpoint_meta": ckpt.meta,
        "path_scoring": dataclasses.asdict(scoring),
        "sim": "cosine of checkpoint item vectors",
        "path_order": "by kind (person, company, specific category, coarse), then by score; coarse: genres, "
        "decades, entities with specificity < path_scoring.coarse_specificity, categories named after a year, "
        "decade or filming location",
        "explain_window": f"paths from the latest {window} history items (the model's history_len: 0 = that)",
        "history": "train items + validation item, time ordered with timestamps",
        "top_k": "ServingModel.top_k over all items not in the history",
        "pn_rank_candidates": "all items not in the history (full ranking)",
        "served_order": "the headline figures are of the served top-10: the model's top-50 re-ranked toward items "
        "explained through a person or a company at FEDXREC_ENTITY_RERANK (the API's default; 0: the model's order), "
        "as server.api.service does; served_order: the full-ranking NDCG@10 / HR@10 of the P1 test item in the model's "
        "order and in the served one, and the model order's explanation figures",
        "ms_per_user": "wall time of kg.PathExplainer.explain (the serving explainer, output equal to kg.explain_items) on the top-50 and the re-ranking (paths + sentences); ms_per_user_cpu: "
        "its process CPU time (the wall figure includes waiting for a shared, oversubscribed CPU)",
        "rerank_ndcg": "full-ranking NDCG@10 / HR@10 of the P1 test item, model order vs re-ranked top-50",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out["provenance"] = provenance(settings)
    log.info("explain figures: %s", {k: v for k, v in out.items() if k != "provenance"})
    return out


# ========================================================================================= main


def run(args: argparse.Namespace) -> int:
    if args.checkpoint and Path(args.checkpoint).resolve() == options.default_checkpoint(args.dataset).resolve():
        args.checkpoint = ""  # the default, spelt out
    out = options.output("kg", "bench_kg", args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    for part, fn in (("cold", run_cold), ("explain", run_explain)):
        if part in args.parts:
            out.merge({part: fn(args)})
    if "cold-k1" in args.parts:
        out.replace(["cold", "k1"], run_cold_k(args))
    if "cold-fed" in args.parts:
        out.replace(["cold", "fed"], run_cold_fed(args))
    out.readme()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = options.parser("kg", "python -m simulations.bench_kg", (__doc__ or "").split("\n")[0]).parse_args(argv)
    with options.clean_errors("bench_kg"):
        return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
