"""The ``fedxrec`` command: ``fedxrec <command> [options]``; ``fedxrec <command> --help`` for each.

Only the standard library and the option definitions (:mod:`simulations.options`) are imported to
parse a command line: torch, Flower, transformers, Opacus and FastAPI are imported by the command
that needs them, so ``--help`` and bad-option errors are immediate.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from shared.config import DEFAULT_DATASET
from simulations import options

Handler = Callable[[argparse.Namespace, list[str]], int | None]


def _run(args: argparse.Namespace, rest: list[str]) -> int:
    from simulations.run_default import main as run_default

    overrides = []
    if args.dataset != DEFAULT_DATASET:
        overrides.append(f'data.dataset="{args.dataset}"')
    if args.data_dir:  # absolute: the app processes may run in another directory
        overrides.append(f'data.dir="{Path(args.data_dir).resolve()}"')
    if args.rounds:
        overrides.append(f"num-server-rounds={args.rounds}")
    flwr_args = (["-c", " ".join(overrides)] if overrides else []) + [x for c in args.run_config for x in ("-c", c)]
    # run_default checks the node count against the dataset's users before anything starts
    nodes = ["--num-supernodes", str(args.num_nodes)] if args.num_nodes else []
    return run_default([*flwr_args, *nodes, *rest])


def _central(args: argparse.Namespace, rest: list[str]) -> int:
    from simulations import bench_core

    args.runs = list(options.CENTRAL_RUNS)
    return bench_core.run(args, command="central")


def _download(args: argparse.Namespace, rest: list[str]) -> int:
    from shared.download import download_kg, download_ml100k

    data_dir = options.resolve_data_dir(args.data_dir)
    if args.dataset != "ml-100k":
        raise SystemExit(
            f"fedxrec download: error: cannot download {args.dataset!r}: only ml-100k and its DBpedia KG have "
            f"pinned checksums; place the MovieLens CSV release (ratings.csv, movies.csv, ...) in "
            f"{data_dir / args.dataset}/ yourself"
        )
    if (data_dir / "ml-100k" / "u.data").exists():
        print(f"ml-100k: already in {data_dir / 'ml-100k'}")
    else:
        print(f"ml-100k: downloaded to {download_ml100k(data_dir)}")
    print(f"KG {args.kg_version}: downloaded to {download_kg(data_dir, args.kg_version)}")
    return 0


def _serve(args: argparse.Namespace, rest: list[str]) -> int:
    from server.api.cli import serve_args

    return serve_args(args)


def _bench(part: str) -> Handler:
    def run(args: argparse.Namespace, rest: list[str]) -> int:
        import importlib

        module = importlib.import_module(f"simulations.bench_{part}")
        code = module.run(args)
        return code if isinstance(code, int) else 0

    return run


def _audit(args: argparse.Namespace, rest: list[str]) -> int:
    from simulations import audit

    return audit.run(args)


BENCH_HELP = {
    "core": "centralised reference runs, baselines, step costs and the prefix-cache speedup",
    "kg": "KG cold start and explanation quality",
    "fed": "Flower simulations of the non-private and user-level DP presets, and their costs",
    "dp": "record-level DP presets, the privacy-utility curve and the ablation (in-process)",
    "api": "loopback load test of the explanation API",
    "sim": "the simulation's cost per client and per round at 610, 943 and 10,000 nodes",
}


def build_parser() -> argparse.ArgumentParser:
    """The whole ``fedxrec`` command tree (cheap: no heavy imports)."""
    from server.api.cli import add_serve_options

    ap = argparse.ArgumentParser(
        prog="fedxrec",
        description="fedxrec: a privacy-preserving federated recommender (simulation, benchmarks, API).",
        epilog="Figures go to results/ only from a documented benchmark command at its documented "
        "settings; any other setting writes under runs/<bench>/ (see the README).",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(parent: argparse._SubParsersAction, name: str, help: str, add: Callable, fn: Handler, **kw: str) -> None:  # type: ignore[type-arg]
        p = parent.add_parser(name, help=help, description=kw.get("description", help[0].upper() + help[1:] + "."))
        add(p)
        p.set_defaults(func=fn)

    leaf(
        sub,
        "run",
        "the main job: the default local federated simulation (flwr run), one user per node",
        options.add_run,
        _run,
        description="The main job: `flwr run .` on the local simulation engine, one simulated node per user "
        "of the dataset (private by default: record-level DP, ε = 8). Options after `--` go to `flwr run`.",
    )
    leaf(
        sub,
        "central",
        "the centralised reference run and the MostPop and BPR-MF baselines",
        options.add_central,
        _central,
    )
    leaf(sub, "serve", "serve the explanation API (uvicorn)", add_serve_options, _serve)
    leaf(sub, "download", "download ml-100k and its DBpedia KG, checksums verified", options.add_download, _download)
    bench = sub.add_parser("bench", help="the benchmarks (core, kg, fed, dp, api, sim)", description="The benchmarks.")
    parts = bench.add_subparsers(dest="part", metavar="PART", required=True)
    for part, text in BENCH_HELP.items():
        leaf(parts, part, text, options.ADDERS[part], _bench(part))
    leaf(sub, "audit", "privacy audit (MIA, upload leakage, noise replay) and fault cases", options.add_audit, _audit)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:  # `fedxrec run [options] -- <flwr run options>`
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    prog = f"fedxrec {args.command}" + (f" {args.part}" if getattr(args, "part", None) else "")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with options.clean_errors(prog):
        try:
            code = args.func(args, rest)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
