"""Core benchmark: centralised reference runs, baselines, and the cost of ``k`` and of the cache.

Writes ``runs.{mostpop,bprmf-central,central,...}``, ``cost.train_step_seconds.k0|k1|k2`` (one local
step of a ``fed`` preset client, on its own batch: :func:`fed_client_batch`) and
``cost.prefix_cache_speedup`` into ``results/summary.json`` and regenerates ``results/README.md``
(ad-hoc settings: under ``runs/bench_core/``; see :func:`simulations.results.output_for`).

Usage: ``fedxrec bench core [--runs mostpop,central] [--dataset ml-latest-small]`` (or
``python -m simulations.bench_core``); ``fedxrec central`` is ``--runs mostpop,bprmf-central,central``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.config import ClientRunConfig, parse_run_config
from client.train import local_optimizer, plain_batch, subset_scores
from shared.backbone import cached_prefix, extended_mask, load_backbone
from shared.central import RunResult, run_bprmf, run_mostpop, train_central
from shared.checkpoint import save_checkpoint
from shared.config import Config, DataConfig, ModelConfig, TrainConfig
from shared.model import Recommender, bf16_supported
from shared.pipeline import Prepared, build_model, prepare
from shared.training import Sequences, sample_losses
from simulations import options
from simulations.presets import PRESETS
from simulations.results import provenance
from simulations.runner import run_config

log = logging.getLogger("fedxrec.bench_core")


#: the k comparison ``central-k0|k1|k2``: the ``central`` model, at k >= 1 with ``fed-k1``'s top-layer tower,
#: all trained alike. Central training computes the whole catalogue's item vectors every step, so a k >= 1
#: step costs the same at any batch size: a large batch, and a fixed budget of epochs
K_RUNS = ("central-k0", "central-k1", "central-k2")
K_TRAIN: dict[str, Any] = {"batch_size": 1024, "epochs": 6}
K_ABOUT = (
    "the central model at model.top-layers = k (k >= 1: fed-k1's tower), batch 1024, 6 epochs for every k "
    "(a k = 1 step computes all items through the top layer); best validation epoch"
)


def k_model(base: ModelConfig, k: int) -> ModelConfig:
    """``base`` at ``model.top-layers = k``; for k >= 1 with the ``fed-k1`` preset's top-layer settings."""
    if k == 0:
        return dataclasses.replace(base, top_layers=0)
    top = parse_run_config(run_config(PRESETS["fed-k1"])).model
    knobs = ("adapter", "lora_rank", "lora_alpha", "top_tokens", "top_dropout", "top_precision")
    return dataclasses.replace(base, top_layers=k, **{n: getattr(top, n) for n in knobs})


def central_run(
    prep: Prepared, mcfg: ModelConfig, tcfg: TrainConfig, name: str, ckpt_dir: Path | None = None
) -> RunResult:
    model = build_model(mcfg, prep, prep.split.num_users, seed=tcfg.seed)
    res = train_central(
        model,
        prep.split,
        tcfg,
        on_epoch=lambda e, p: log.info(
            "%s epoch %d loss %.4f val HR@10 %.4f NDCG@10 %.4f", name, e, p["loss"], p["val_hr@10"], p["val_ndcg@10"]
        ),
    )
    log.info("%s: test %s", name, res.summary())
    if ckpt_dir is not None:
        save_checkpoint(model, prep.dataset.catalogue.ids, ckpt_dir, meta={"run": name, **res.summary()})
    return res


class _UncachedPrefix:
    """Hidden states computed from tokens through the frozen lower layers (the no-cache baseline).

    Replaces :meth:`ItemTower._prefix`, so the baseline runs the same distinct, length-cut rows as
    the cached path; the lower layers run as the cache builder runs them (float32, no gradient).
    """

    def __init__(self, backbone: Any, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, k: int) -> None:
        # lengths (N,): each row's real tokens, the tower's own ``ItemTower.lengths``
        self.backbone, self.ids, self.mask, self.lengths = backbone, ids, mask, lengths
        self.lower = backbone.encoder.layer[: len(backbone.encoder.layer) - k]

    def __call__(self, rows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        # the lower layers read every real token (as when the cache was built); only then is the
        # result cut to ``length`` (shorter than the rows' text under ``model.top-tokens``)
        full = max(length, int(self.lengths[rows].max()))
        ids, mask = self.ids[rows, :full], self.mask[rows, :full]
        with torch.no_grad():
            h = self.backbone.embeddings(input_ids=ids)  # (R, T, H)
            ext = extended_mask(mask, h.dtype)
            for layer in self.lower:
                out = layer(h, attention_mask=ext)
                h = out[0] if isinstance(out, tuple) else out
        return h[:, :length], mask[:, :length]


@dataclasses.dataclass
class ClientBatch:
    """One local batch of a ``fed`` preset client (one user per node): what :func:`train_plain` trains on."""

    users: np.ndarray  # (B,) local user positions (all 0: one user)
    cand: np.ndarray  # (B, 1 + M) each sample's target, then M negatives shared by the batch
    hist: np.ndarray | None  # (B, L) history rows, -1 padded (history user mode)
    about: dict[str, Any]


def fed_client_batch(prep: Prepared, rc: ClientRunConfig, *, seed: int = 0) -> ClientBatch:
    """The first local batch of the node whose user has the median number of training items."""
    lengths = np.array([len(t) for t in prep.split.train])
    user = int(np.flatnonzero(lengths == int(np.median(lengths)))[0])
    seqs = Sequences.from_lists([prep.split.train[user]])  # the node's split: its one user at position 0
    users, steps = seqs.samples()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(users))[: rc.local.batch_size]
    mcfg = rc.model
    hist_len = mcfg.history_len if mcfg.user_mode == "history" else None
    cand, hist = plain_batch(
        seqs,
        users[idx],
        steps[idx],
        history_len=hist_len,
        negatives=rc.core.train.negatives,
        num_items=prep.split.num_items,
        rng=rng,
    )
    touched = np.unique(np.concatenate([cand.ravel(), hist[hist >= 0] if hist is not None else cand[:0, 0]]))
    about: dict[str, Any] = {
        "source": "preset fed: one user per node, its first local batch (client.train.train_plain)",
        "node_user_train_items": int(lengths[user]),
        "samples": len(idx),
        "shared_negatives": rc.core.train.negatives,
        "user_mode": mcfg.user_mode,
        "history_len": hist_len,
        "sequences_before_dedup": int(cand.size + (hist >= 0).sum() if hist is not None else cand.size),
        "distinct_rows": len(touched),
    }
    return ClientBatch(users[idx], cand, hist, about)


def _one_step(model: Recommender, opt: torch.optim.Optimizer, batch: ClientBatch, tcfg: TrainConfig) -> float:
    t = time.perf_counter()
    scores = subset_scores(model, batch.users, batch.hist, batch.cand)
    loss = sample_losses(scores, tcfg.loss, tcfg.temperature).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def step_models(
    prep: Prepared,
    mcfg: ModelConfig,
    cache_dir: str,
    *,
    ks: tuple[int, ...] = (0, 1, 2),
    top: ModelConfig | None = None,
) -> dict[str, Recommender]:
    """The cost variants: ``k0`` (``mcfg``), ``k1``, ``k2`` (``top``, default ``mcfg``, at ``k``).

    At k = 1 also ``k1_uncached`` (the lower layers from tokens every step) and ``k1_top_dropout`` (the
    top layer's own dropout flipped from ``top``'s setting).
    """
    backbone, tok = load_backbone(mcfg.backbone)
    texts = prep.dataset.catalogue.texts()
    models: dict[str, Recommender] = {}
    for k in ks:
        kcfg = dataclasses.replace(mcfg if k == 0 else (top or mcfg), top_layers=k)
        cache, _ = cached_prefix(
            kcfg.backbone, texts, cache_dir, top_layers=k, max_length=kcfg.max_length, model=backbone, tok=tok
        )
        torch.manual_seed(0)
        models[f"k{k}"] = Recommender(kcfg, cache, 1, backbone if k else None)
        if k == 1:
            enc = tok(texts, padding="max_length", truncation=True, max_length=kcfg.max_length, return_tensors="pt")
            uncached = copy.deepcopy(models["k1"])
            uncached.items._prefix = _UncachedPrefix(  # type: ignore[method-assign]
                backbone, enc["input_ids"], enc["attention_mask"], uncached.items.lengths, k
            )
            models["k1_uncached"] = uncached
            torch.manual_seed(0)
            flipped = dataclasses.replace(kcfg, top_dropout=not kcfg.top_dropout)
            models["k1_top_dropout"] = Recommender(flipped, cache, 1, backbone)
    return models


def interleaved_medians(
    models: dict[str, Recommender], batch: ClientBatch, rc: ClientRunConfig, repeats: int
) -> dict[str, float]:
    """Median seconds of one local training step per model, steps interleaved round-robin.

    One warm-up round, then ``repeats``: load from other processes affects every variant alike.
    """
    opts = {n: local_optimizer(m, rc.local) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    for m in models.values():
        m.train()  # as train_plain: dropout on (the top BertLayers' own too)
    for r in range(repeats + 1):
        for n, m in models.items():
            dt = _one_step(m, opts[n], batch, rc.core.train)
            if r:
                times[n].append(dt)
    return {n: float(np.median(v)) for n, v in times.items()}


def step_costs(cfg: Config, prep: Prepared, repeats: int = 7) -> dict[str, object]:
    """Seconds of one training step of a ``fed`` preset client for k = 0, 1, 2, and the cache speedup at k = 1.

    The batch and the step are the federated client's (:func:`fed_client_batch`, ``subset_scores``,
    its optimizer); the model is the preset's with ``model.top-layers = k``. ``k1_uncached`` runs the
    lower layers from tokens every step, on the same rows and tokens as ``k1``.
    """
    rc = parse_run_config(run_config(PRESETS["fed"]))
    top = parse_run_config(run_config(PRESETS["fed-k1"])).model  # the k >= 1 model a fed-k1 device trains
    batch = fed_client_batch(prep, rc)
    models = step_models(prep, rc.model, cfg.data.cache_dir, top=top)
    med = interleaved_medians(models, batch, rc, repeats)
    log.info("step cost (median s) %s on %s", {k: round(v, 4) for k, v in med.items()}, batch.about)
    dropout_key = "k1_top_dropout_" + ("on" if not top.top_dropout else "off")
    return {
        "train_step_seconds": {k: round(med[k], 4) for k in ("k0", "k1", "k2")},
        "train_step_seconds_k1_uncached": round(med["k1_uncached"], 4),
        f"train_step_seconds_{dropout_key}": round(med["k1_top_dropout"], 4),
        "prefix_cache_speedup": round(med["k1_uncached"] / med["k1"], 2),
        "k1_over_k0": round(med["k1"] / med["k0"], 1),
        "cost_batch": batch.about
        | {
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "model": {
                "k0": f"preset fed (adapter {rc.model.adapter} over the pooled output)",
                "k1_k2": "preset fed-k1 at model.top-layers = k",
                "adapter": top.adapter,
                "top_dropout": top.top_dropout,
                "top_precision": top.top_precision,
                "top_dtype": str(models["k1"].items.top_dtype).removeprefix("torch."),
                "bf16_native": bf16_supported(),
            },
        },
    }


def run(args: argparse.Namespace, command: str = "core") -> int:
    """The runs of ``args.runs`` (``command``: ``core``, or ``central`` for ``fedxrec central``)."""
    out = options.output(command, "bench_core", args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    data = DataConfig(dataset=args.dataset, dir=args.data_dir)
    cfg = Config(data=data, model=ModelConfig(), train=TrainConfig(epochs=args.epochs))
    prep = prepare(cfg)
    wanted = list(args.runs)
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    elif out.documented:
        checkpoint = options.default_checkpoint(args.dataset)
    else:  # an ad-hoc model never replaces the one the other benchmarks and the API read
        checkpoint = out.root / options.default_checkpoint(args.dataset).relative_to("runs")
    runs: dict[str, dict[str, object]] = {}
    base = {"dataset": args.dataset}

    def record(name: str, res: RunResult, settings: dict[str, object]) -> None:
        runs[name] = res.summary() | {"provenance": provenance(base | settings)}
        out.merge({"runs": {name: runs[name]}})

    if "mostpop" in wanted:
        record("mostpop", run_mostpop(prep.split), {})
    variants = {
        "central": cfg.model,
        "central-idres": dataclasses.replace(cfg.model, id_residual=True),
        "central-textonly": dataclasses.replace(cfg.model, user_mode="personal"),
        # the federated model (no per-item parameters, cosine scores) trained centrally: the federated
        # runs' ceiling without personalisation
        "central-fedmodel": dataclasses.replace(cfg.model, score="cosine", item_bias=False),
    }
    for name, mcfg in variants.items():
        if name in wanted:
            ck = checkpoint if name == "central" else None
            res = central_run(prep, mcfg, cfg.train, name, ck)
            record(name, res, {"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(cfg.train)})
    k_runs = [n for n in K_RUNS if n in wanted]
    for name in k_runs:
        k = int(name.removeprefix("central-k"))
        mcfg = k_model(cfg.model, k)
        ktrain = dataclasses.replace(cfg.train, **K_TRAIN)
        kprep = prep if k == cfg.model.top_layers else prepare(dataclasses.replace(cfg, model=mcfg))
        res = central_run(kprep, mcfg, ktrain, name)
        record(name, res, {"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(ktrain), "about": K_ABOUT})
    if "bprmf-central" in wanted:
        # a small grid, selected on validation only (test figures of the chosen setting are reported)
        grid = [{"dim": 64, "epochs": args.bpr_epochs, "lr": lr, "reg": 1e-4} for lr in (2e-3, 5e-3)]
        tried = [(run_bprmf(prep.split, **g), g) for g in grid]  # type: ignore[arg-type]
        for r, g in tried:
            log.info("bprmf %s: val %s", g, {k: round(v, 4) for k, v in r.val.items()})
        res, best = max(tried, key=lambda rg: rg[0].val["hr@10"] + rg[0].val["ndcg@10"])
        record("bprmf-central", res, best | {"grid": grid, "selected_on": "validation hr@10 + ndcg@10"})
    if "cost" in wanted:
        costs = step_costs(cfg, prep)
        prov = provenance(base | {"model": dataclasses.asdict(cfg.model)})
        out.merge({"cost": costs | {"core_provenance": prov}})
    out.readme()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = options.parser("core", "python -m simulations.bench_core", (__doc__ or "").split("\n")[0]).parse_args(argv)
    with options.clean_errors("bench_core"):
        return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
