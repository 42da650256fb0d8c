"""Privacy and fault audit: ``fedxrec audit [--parts mia,leak,replay,faults]`` (``python -m simulations.audit``).

The privacy parts audit the models users would get: the presets' own checkpoints, which the
benchmarks leave under ``results/fed/<preset>/checkpoint`` (``python -m simulations.bench_fed
--presets fed``; ``python -m simulations.bench_dp`` for the DP presets). A preset without one is
skipped with a message naming the path and the command that makes it. ``--presets a,b`` audits only
those presets (``mia``, ``leak``) and keeps every other preset's earlier figures and provenance entry
(stamped ``audited`` with that run's time): for re-auditing one retrained model.

* ``mia``: membership inference on each preset's served model (:func:`audit_privacy.membership_inference`);
* ``leak``: what one device's upload reveals to the server, starting from each preset's model with the
  preset's device settings (:func:`audit_privacy.upload_leakage`);
* ``replay``: can the server regenerate a ``fed-dp-eps8`` device's DP noise and subtract it, under the
  old node-id/round seeding and now (:func:`audit_privacy.replay_attack`);
* ``faults``: the fault cases of :mod:`simulations.audit_faults`.

Writes ``privacy.*`` and ``faults.*`` into ``results/summary.json`` (this audit's keys replaced, every
other key left alone; ``privacy.provenance.<part>`` holds each part's command and settings) and
re-renders ``results/README.md``. ``--dataset NAME`` audits that dataset's presets (checkpoints in
``results/fed/<name>-<preset>/``; figures under ``datasets.<name>.privacy``); any attack setting off its
default, ``--set`` or ``--checkpoints`` makes an ad-hoc run, written under ``runs/audit/`` instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.config import DEFAULT_DATASET
from simulations import options
from simulations.runner import ENV

if TYPE_CHECKING:
    from simulations.results import Output

log = logging.getLogger("simulations.audit")

PARTS = ("mia", "leak", "replay", "faults")
#: the keys of the earlier audit (of in-process stand-ins, one flat ``privacy.provenance``): all removed
#: the first time this audit writes, so no stand-in figure is left beside the presets' own
STAND_IN_KEYS = (
    "training",
    "mia",
    "mia_auc",
    "mia_advantage",
    "upload_leak",
    "upload_leak_p10",
    "upload_leak_p10_id_residual",
    "upload_leak_p10_random",
    "provenance",
)


def replace_in_summary(
    section: str | list[str], entries: dict[str, Any], *, merge: tuple[str, ...] = (), path: Path | None = None
) -> None:
    """Set ``summary[section][key] = value`` for each entry, replacing (not merging) old values.

    ``section``: a key, or a key path (``["datasets", name, "privacy"]``); ``path``: the summary file
    (default ``results/summary.json``). A value of ``None`` deletes the key; keys in ``merge`` are dicts
    updated one level deep instead. Used for this audit's own keys, so that a re-run leaves no stale
    sub-keys behind; takes the same lock as :func:`simulations.results.merge_summary`.
    """
    import fcntl
    import json

    from shared.io import atomic_write_text
    from simulations.results import RESULTS

    path = path or RESULTS / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        sec = data
        for key in [section] if isinstance(section, str) else section:
            sec = sec.setdefault(key, {})
        for k, v in entries.items():
            if v is None:
                sec.pop(k, None)
            elif k in merge and isinstance(v, dict) and isinstance(sec.get(k), dict):
                sec[k].update(v)
            else:
                sec[k] = v
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Run-config overrides under every preset: ``--data-dir`` and each ``--set KEY=VALUE`` (JSON or text)."""
    import json

    out: dict[str, Any] = {"data.dataset": args.dataset}
    if args.data_dir:
        out["data.dir"] = args.data_dir
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _preset_config(name: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """The client and server run configs of a preset (the defaults plus its overrides)."""
    from client.config import parse_run_config
    from server.config import parse_server_config
    from simulations.presets import PRESETS
    from simulations.runner import run_config

    cfg = run_config({**PRESETS[name], **_overrides(args)})
    return parse_run_config(cfg), parse_server_config(cfg)


def _proximal_mu(src: Any) -> float:
    """The FedProx weight the server sends (only the ``fedprox`` strategy sends one)."""
    return float(src.fed.proximal_mu) if src.fed.strategy == "fedprox" else 0.0


def _skipped(missing: dict[str, str], part: str) -> None:
    for name, msg in missing.items():
        log.warning("%s: skipping %s: %s", part, name, msg)
        print(f"{part}: skipping {name}: {msg}", file=sys.stderr)


def _chosen(args: argparse.Namespace, presets: tuple[str, ...]) -> tuple[str, ...]:
    """``presets`` narrowed to ``--presets`` (all of them without it)."""
    return tuple(p for p in presets if not args.presets or p in args.presets)


def _keep_others(
    section: Any, part: str, figures: dict[str, Any], settings: dict[str, Any]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``--presets``: the earlier figures of the presets not audited now stay, with their provenance.

    Returns the per-preset keys to merge (instead of replace) and puts each kept preset's earlier
    model entry, stamped with when it was audited, into ``settings`` (``models`` or ``devices``).
    """
    old = (section.get("provenance") or {}).get(part) or {}
    key = "models" if part == "mia" else "devices"
    kept = {
        n: {**m, "audited": m.get("audited", old.get("finished"))}
        for n, m in (old.get("settings") or {}).get(key, {}).items()
        if n not in settings[key]
    }
    settings[key] = kept | settings[key]
    settings["skipped"] = {n: m for n, m in settings.get("skipped", {}).items() if n not in kept}
    merge = tuple(k for k, v in figures.items() if isinstance(v, dict))
    return settings, merge


def _mia(args: argparse.Namespace, results: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from server.loop import initial_model
    from shared.checkpoint import load_checkpoint
    from shared.pipeline import prepare
    from shared.serving import ServingModel
    from simulations import audit_privacy as ap

    found, missing = ap.preset_checkpoints(_chosen(args, ap.MIA_PRESETS), results, args.dataset)
    _skipped(missing, "mia")
    settings = ap.MiaSettings(users=args.mia_users, per_user=args.mia_per_user, recent=args.mia_recent)
    keys = ("mia_auc", "mia_score_auc", "mia_auc_recent", "mia_auc_calibrated", "mia_auc_reference")
    keys += ("mia_auc_heldout", "mia_auc_public_start")
    out: dict[str, Any] = {k: {} for k in keys}
    out |= {"mia_advantage": {}, "mia": {}, "mia_skipped": missing or None}
    models: dict[str, Any] = {}
    prep = None
    for name, path in found.items():
        crc, src = _preset_config(name, args)
        prep = prep or prepare(crc.core, progress=False)
        ck = load_checkpoint(path)
        ap.check_catalogue(ck.item_ids, prep.dataset.catalogue.ids, path)
        # the preset's public start (its round-0 model, trained on nobody): the reference model of the
        # reference attack, and a control (the same attacks on it: what the public catalogue alone gives)
        public = ap.serving_of(initial_model(src, prep), ck.item_ids)
        r = ap.membership_inference(ServingModel(ck), prep.split, settings, reference=public)
        r0 = ap.membership_inference(public, prep.split, settings)
        r |= {f"public_start.{k}": v for k, v in r0.items() if k.endswith(".auc")}
        log.info("MIA %s: %s", name, {k: round(v, 4) for k, v in r.items() if k.endswith(".auc")})
        out["mia"][name] = r
        # the headline membership figure: the user's two newest training interactions against its two
        # held-out ones (same user, neighbours in time, same taste): only having been trained on differs
        out["mia_auc"][name] = r.get("history.score.auc_newest_vs_heldout")
        # the score-threshold attack (training items against random items): taste and membership together
        out["mia_score_auc"][name] = r["history.score.auc"]
        out["mia_auc_recent"][name] = r["recent.score.auc"]
        out["mia_auc_calibrated"][name] = r["history.calibrated.auc"]
        out["mia_auc_reference"][name] = r["history.reference.auc"]
        out["mia_auc_heldout"][name] = r.get("history.score.auc_heldout")
        out["mia_auc_public_start"][name] = r["public_start.history.score.auc"]
        out["mia_advantage"][name] = r["history.score.advantage"]
        models[name] = {"checkpoint": str(path), "meta": ck.meta}
    settings_out = {"models": models, "attack": settings.describe(), "skipped": missing}
    return out, settings_out


def _leak(args: argparse.Namespace, results: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from shared.checkpoint import load_checkpoint
    from shared.pipeline import prepare
    from simulations import audit_privacy as ap

    found, missing = ap.preset_checkpoints(_chosen(args, ap.LEAK_PRESETS), results, args.dataset)
    _skipped(missing, "leak")
    out: dict[str, Any] = {"upload_leak_p10": {}, "upload_leak_p10_id_residual": {}, "upload_leak": {}}
    out["upload_leak_skipped"] = missing or None
    devices: dict[str, Any] = {}
    prep = None
    users = None
    for name, path in found.items():
        crc, src = _preset_config(name, args)
        prep = prep or prepare(crc.core, progress=False)
        if users is None:
            rng = np.random.default_rng(args.seed + 1)
            users = rng.choice(prep.split.num_users, size=min(args.leak_users, prep.split.num_users), replace=False)
        ck = load_checkpoint(path)
        ap.check_catalogue(ck.item_ids, prep.dataset.catalogue.ids, path)
        glob = ap.global_model(ck, prep)
        mu = _proximal_mu(src)
        for resid in (False, True):
            r = ap.upload_leakage(prep, glob, users, crc, id_residual=resid, proximal_mu=mu, seed=args.seed)
            log.info("leak %s id-residual=%s: %s", name, resid, r)
            key = "upload_leak_p10_id_residual" if resid else "upload_leak_p10"
            out[key][name] = r["p10"]
            out["upload_leak"][f"{name}{'-id-residual' if resid else ''}"] = r
            out["upload_leak_p10_random"] = r["random_p10"]
        devices[name] = {
            "checkpoint": str(path),
            "local": dataclasses.asdict(crc.local),
            "dp": dataclasses.asdict(crc.dp) if crc.dp.enabled else "off",
            "proximal-mu": mu,
        }
    settings = {
        "users": args.leak_users,
        "measured": "one round of a one-user device from the preset's trained model with the preset's device "
        "settings; the server ranks every catalogue item by the upload (bias raise, score raise for the mean "
        "item vector, ID-residual change) and keeps the best ranking on average; precision@10 against the "
        "user's training items; random_p10 = the user's share of the catalogue; prior_p10 = the model's own "
        "top items, without the upload",
        "devices": devices,
        "skipped": missing,
    }
    return out, settings


def _replay(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    from client.config import NodeSpec
    from client.data import _prepared, load_node_data
    from client.privacy import plan_noise
    from client.train import build_model
    from server.loop import initial_model
    from simulations import audit_privacy as ap

    name = "fed-dp-eps8"
    crc, src = _preset_config(name, args)
    prep = _prepared(crc.core)
    partitions = prep.split.num_users  # one user per node (943 on ml-100k)
    spec = NodeSpec(partition_id=args.replay_partition, num_partitions=partitions)
    data = load_node_data(spec, crc.core)
    glob = initial_model(src, prep)  # round 1: the server sends the round-0 model
    rnd = 1
    model = build_model(crc.model, data, seed=args.replay_node_id % (2**31))  # as the node handler does
    model.load_partial(glob.public_state())
    lcfg = dataclasses.replace(crc.local, lr=crc.local.lr * src.fed.lr_scale(rnd, crc.num_rounds))
    sigma = plan_noise(crc.dp, num_rounds=crc.num_rounds, fraction=crc.fraction_train)
    torch.manual_seed(0)
    r = ap.replay_attack(
        model,
        data,
        pcfg=crc.dp,
        lcfg=lcfg,
        tcfg=crc.core.train,
        noise_multiplier=sigma,
        node_id=args.replay_node_id,
        server_round=rnd,
        partition_id=args.replay_partition,
        proximal_mu=_proximal_mu(src),
        scan=args.replay_seeds,
    )
    log.info(
        "replay %s: old seeding %s (clean diff %.3g), now %s (clean diff %.3g), noise std %.3g",
        name,
        r["old_seeding"]["verdict"],
        r["old_seeding"]["clean_max_abs_diff_wire"],
        r["current"]["verdict"],
        r["current"]["clean_max_abs_diff_wire"],
        r["noise_std_in_upload"],
    )
    out = {"replay": {name: r["current"]["verdict"]}, "replay_evidence": {name: r}}
    settings = {
        "preset": name,
        "device": f"partition {args.replay_partition} of {partitions} (one user), node id "
        f"{args.replay_node_id}, round {rnd}, from the round-0 global model",
        "old seeding": "emulated as train_dp(..., test_seed=(node_id * 1_000_003 + round) mod 2^31)",
        "attacker": "knows the architecture, the public DP settings, the global model and the device's number "
        "of samples; the upload replay also gives it the device's data",
        "candidate seeds": list(ap.candidate_seeds(args.replay_node_id, rnd, args.replay_partition, args.replay_seeds)),
    }
    return out, settings


def run(args: argparse.Namespace) -> int:
    parts = set(args.parts)
    if "faults" in parts and args.dataset != DEFAULT_DATASET:
        raise SystemExit(
            f"audit: error: --parts faults runs on a slice of {DEFAULT_DATASET} only; "
            f"with --dataset {args.dataset} choose from mia,leak,replay"
        )
    fault_cases = [c.strip() for c in args.fault_cases.split(",") if c.strip()]
    out = options.output("audit", "audit", args)
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)

    import torch

    from simulations.results import RESULTS, provenance

    torch.set_num_threads(int(os.environ.get("FEDXREC_AUDIT_THREADS", "1")))
    results = Path(args.checkpoints) if args.checkpoints else RESULTS
    rc = 0
    for part, fn in (("mia", _mia), ("leak", _leak), ("replay", None)):
        if part not in parts:
            continue
        t0 = time.time()
        figures, settings = _replay(args) if fn is None else fn(args, results)
        skipped = settings.get("skipped", {})
        if part in ("mia", "leak") and not settings.get("models" if part == "mia" else "devices"):
            log.error("%s: no preset has a checkpoint under %s; nothing audited", part, results / "fed")
            rc = 1
            continue
        merge: tuple[str, ...] = ()
        privacy = out.section(out.load()).get("privacy", {})  # as the earlier parts left it
        if args.presets and part in ("mia", "leak"):
            settings, merge = _keep_others(privacy, part, figures, settings)
        prov = provenance(settings | {"overrides": _overrides(args), "seconds": round(time.time() - t0, 1)})
        entries = figures | {"provenance": {part: prov}}
        if out.write:
            _drop_stand_in(out, privacy)
            replace_in_summary(out.keys("privacy"), entries, merge=("provenance", *merge), path=out.summary)
        out.readme()
        if skipped:
            log.warning("%s: %d preset(s) skipped (see above)", part, len(skipped))
    if "faults" in parts:
        from simulations.audit_faults import run_faults

        try:
            results_f, settings_f = run_faults(fault_cases, data_dir=args.data_dir)
        except ValueError as e:  # an unknown case, named
            raise SystemExit(f"audit: error: --fault-cases: {e}") from None
        prov = provenance(settings_f)
        # faults.provenance = the latest invocation; each case keeps the one that produced it
        if out.write:
            replace_in_summary(
                out.keys("faults"),
                {case: r | {"provenance": prov} for case, r in results_f.items()} | {"provenance": prov},
                path=out.summary,
            )
        out.readme()
        failed = [c for c, r in results_f.items() if r.get("status") != "pass"]
        if failed:
            log.error("fault cases failed: %s", failed)
            return 1
    return rc


def main(argv: list[str] | None = None) -> int:
    args = options.parser("audit", "python -m simulations.audit", (__doc__ or "").split("\n")[0]).parse_args(argv)
    with options.clean_errors("audit"):
        return run(args)


def _drop_stand_in(out: Output, privacy: dict[str, Any]) -> None:
    """Remove the stand-in audit's figures from ``privacy`` (recognised by its one flat ``provenance``)."""
    prov = privacy.get("provenance")
    if isinstance(prov, dict) and "command" in prov:
        replace_in_summary(out.keys("privacy"), dict.fromkeys(STAND_IN_KEYS), path=out.summary)


if __name__ == "__main__":
    raise SystemExit(main())
