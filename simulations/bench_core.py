"""Core benchmark: centralised reference runs, baselines, and the cost of ``k`` and of the cache.

Writes ``runs.{mostpop,bprmf-central,central,...}``, ``cost.train_step_seconds.k0|k1|k2`` and
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

import numpy as np
import torch

from shared.backbone import cached_prefix, extended_mask, load_backbone
from shared.central import RunResult, run_bprmf, run_mostpop, train_central
from shared.checkpoint import save_checkpoint
from shared.config import Config, DataConfig, ModelConfig, TrainConfig
from shared.model import Recommender
from shared.pipeline import Prepared, build_model, prepare
from shared.training import Sequences, make_batch, sample_losses
from simulations import options
from simulations.results import provenance

log = logging.getLogger("fedxrec.bench_core")

#: the cost batch: about 200 sequences, as in one DP step (32 samples x (1 positive + 5 negatives))
COST_SAMPLES, COST_NEGATIVES = 32, 5


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


class _UncachedTower(torch.nn.Module):
    """Item features computed from tokens through the whole backbone (the no-cache baseline)."""

    def __init__(self, model: Recommender, backbone: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.model, self.backbone, self.ids, self.mask = model, backbone, ids, mask

    def text_features(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1)
        ids, mask = self.ids[flat], self.mask[flat]
        k = self.model.cfg.top_layers
        with torch.no_grad():  # frozen lower layers
            h = self.backbone.embeddings(input_ids=ids)
            ext = extended_mask(mask, h.dtype)
            for layer in self.backbone.encoder.layer[: len(self.backbone.encoder.layer) - k]:
                out = layer(h, attention_mask=ext)
                h = out[0] if isinstance(out, tuple) else out
        return self.model.items.adapter(h, mask).view(*rows.shape, -1)


def _one_step(model: Recommender, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    t = time.perf_counter()
    scores = model(batch["users"], None, batch["candidates"])
    loss = sample_losses(scores, "softmax", 0.1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def step_costs(cfg: Config, prep: Prepared, repeats: int = 7) -> dict[str, object]:
    """Seconds of one DP-free training step (same batch) for k = 0, 1, 2, and the cache speedup at k = 1.

    The variants' steps are interleaved (round-robin, median of ``repeats`` after one warm-up) so that
    load from other processes affects them alike.
    """
    backbone, tok = load_backbone(cfg.model.backbone)
    texts = prep.dataset.catalogue.texts()
    rng = np.random.default_rng(0)
    seqs = Sequences.from_lists(prep.split.train)
    users, steps = seqs.samples()
    idx = rng.choice(len(users), COST_SAMPLES, replace=False)
    batch = make_batch(
        seqs, users[idx], steps[idx], history_len=None, negatives=COST_NEGATIVES, num_items=len(texts), rng=rng
    )
    batch["users"] = torch.zeros_like(batch["users"])
    models: dict[str, Recommender] = {}
    for k in (0, 1, 2):
        mcfg = dataclasses.replace(cfg.model, top_layers=k, user_mode="personal", dropout=0.0)
        cache, _ = cached_prefix(
            mcfg.backbone, texts, cfg.data.cache_dir, top_layers=k, max_length=mcfg.max_length, model=backbone, tok=tok
        )
        torch.manual_seed(0)
        models[f"k{k}"] = Recommender(mcfg, cache, 1, backbone if k else None)
        if k == 1:
            enc = tok(texts, padding="max_length", truncation=True, max_length=mcfg.max_length, return_tensors="pt")
            uncached = copy.deepcopy(models["k1"])
            shim = _UncachedTower(uncached, backbone, enc["input_ids"], enc["attention_mask"])
            uncached.items.text_features = shim.text_features  # type: ignore[method-assign]
            models["k1_uncached"] = uncached
    opts = {n: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    for r in range(repeats + 1):
        for n, m in models.items():
            dt = _one_step(m, opts[n], batch)
            if r:  # the first round warms up
                times[n].append(dt)
    med = {n: float(np.median(v)) for n, v in times.items()}
    log.info("step cost (median s) %s", {k: round(v, 4) for k, v in med.items()})
    return {
        "train_step_seconds": {k: round(med[k], 4) for k in ("k0", "k1", "k2")},
        "train_step_seconds_k1_uncached": round(med["k1_uncached"], 4),
        "prefix_cache_speedup": round(med["k1_uncached"] / med["k1"], 2),
        "cost_batch": {"samples": COST_SAMPLES, "candidates_per_sample": 1 + COST_NEGATIVES, "repeats": repeats},
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
