"""The options of every ``fedxrec`` command and benchmark, importable without torch, Flower or FastAPI.

Each ``add_<command>`` function adds one command's options to a parser; the benchmark modules parse
their own command lines with :func:`parser` (``python -m simulations.bench_core``) and the ``fedxrec``
command adds the same options to its subcommands, so ``fedxrec bench core --help`` is cheap and both
entry points accept exactly the same options.

``NEUTRAL[command]``: the options that do not change the figures a benchmark measures (where data
lives, which of the documented parts or presets to run, threads, output paths). Every other option is
a *setting*: a run with any setting off its default is ad hoc and writes under ``runs/<bench>/``, not
``results/`` (:func:`simulations.results.output_for`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from shared.config import DATASETS, DEFAULT_DATASET, ENTITY_RERANK
from simulations.presets import DP_SUMMARY_KEYS, PRESETS, SUMMARY_KEYS

#: the runs of ``bench core`` (``fedxrec central`` is its first three)
CORE_RUNS = (
    "mostpop",
    "bprmf-central",
    "central",
    "central-idres",
    "central-textonly",
    "central-fedmodel",
    "cost",
    "central-k0",
    "central-k1",
    "central-k2",
)
CORE_DEFAULT_RUNS = ("mostpop", "bprmf-central", "central", "central-idres", "central-textonly", "cost")
CENTRAL_RUNS = ("mostpop", "bprmf-central", "central")
KG_PARTS = ("cold", "explain", "cold-k1", "cold-fed")
KG_DEFAULT_PARTS = ("cold", "explain")
DP_PARTS = ("presets", "curve", "ablation")
AUDIT_PARTS = ("mia", "leak", "replay", "faults")
#: the presets whose models membership inference audits (``simulations.audit_privacy.MIA_PRESETS``)
AUDIT_PRESETS = ("fed", "fed-dp-eps8", "fed-dp-eps4", "fed-dp-eps1", "fed-sdp-eps8", "fed-sdp-eps1")
KG_VERSIONS = ("dbpedia-2016-10", "dbpedia-live-2024")  # shared.data.KG_VERSIONS, without importing numpy

_COMMON = {"dataset", "data_dir", "threads", "no_write", "results"}
NEUTRAL: dict[str, set[str]] = {
    "core": _COMMON | {"runs", "checkpoint"},
    "central": _COMMON | {"checkpoint"},
    "kg": _COMMON | {"parts", "cache_dir", "work_dir", "retrain", "train_if_missing", "checkpoint", "cold_checkpoint"},
    "fed": _COMMON | {"presets", "dp_overhead_only"},
    "dp": _COMMON | {"presets", "parts"},
    "api": _COMMON | {"checkpoint", "server_log", "cache_dir", "p1_only"},
    "audit": _COMMON | {"parts", "fault_cases", "presets"},
    "sim": _COMMON | {"scales", "work_dir"},
}


def csv_of(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated list whose every entry is one of ``choices``."""

    def parse(value: str) -> list[str]:
        items = [s.strip() for s in value.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, bad))}; choose from {','.join(choices)}"
            )
        if not items:
            raise argparse.ArgumentTypeError(f"no {what} given; choose from {','.join(choices)}")
        return items

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None


def positive_int(value: str) -> int:
    n = _int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {n}")
    return n


def non_negative_int(value: str) -> int:
    n = _int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return x


def non_negative_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return x


def add_data(p: argparse.ArgumentParser) -> None:
    """``--dataset`` and ``--data-dir``: every command has both."""
    p.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        choices=DATASETS,
        help=f"dataset name (default {DEFAULT_DATASET}; figures of another dataset go under datasets.<name>.)",
    )
    p.add_argument("--data-dir", default="", help="data directory (default $FEDXREC_DATA_DIR, else ./data)")


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (1 is robust on a shared box)")


def _results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="", help="where documented figures go (default results/)")


def add_central(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs of the central runs")
    p.add_argument("--bpr-epochs", type=positive_int, default=100, help="epochs of BPR-MF")
    p.add_argument(
        "--checkpoint",
        default="",
        help="where the 'central' model is saved (default runs/central/checkpoint; another dataset: "
        "runs/central-<dataset>/checkpoint; an ad-hoc run: under runs/bench_core/)",
    )
    _threads(p)
    _results(p)


def add_core(p: argparse.ArgumentParser) -> None:
    add_central(p)
    p.add_argument(
        "--runs",
        type=csv_of(CORE_RUNS, "runs"),
        default=",".join(CORE_DEFAULT_RUNS),
        help=f"comma-separated, from {','.join(CORE_RUNS)} (default: {','.join(CORE_DEFAULT_RUNS)})",
    )


def add_kg(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument(
        "--parts",
        type=csv_of(KG_PARTS, "parts"),
        default=",".join(KG_DEFAULT_PARTS),
        help="cold, explain (default), cold-k1 (cold.k1: the cold benchmark at model.top-layers = 1, ~40 min), "
        "cold-fed (cold.fed: on the fed-cold preset's best round, see --cold-checkpoint)",
    )
    p.add_argument("--cache-dir", default=".cache/fedxrec", help="split and item-prefix cache")
    p.add_argument("--backbone", default="minilm", help="backbone of models trained here")
    p.add_argument(
        "--checkpoint", default="", help="checkpoint explained (default: the central run's, see fedxrec central)"
    )
    p.add_argument(
        "--cold-checkpoint",
        default="",
        help="checkpoint of --parts cold-fed, trained on the cold split (default: fedxrec bench fed --presets "
        "fed-cold's best round, results/fed/fed-cold/best)",
    )
    p.add_argument("--train-if-missing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs of the central model if it must be trained")
    p.add_argument("--cold-epochs", type=positive_int, default=15)
    p.add_argument("--work-dir", default="runs/kgbench", help="where the cold-split model is cached")
    p.add_argument("--retrain", action="store_true", help="retrain the cold-split model even if cached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--budget-min", type=non_negative_float, default=0.0, help="stop training after this many minutes (0: none)"
    )
    _threads(p)
    p.add_argument("--recency-weight", type=float, default=0.5)
    p.add_argument("--similarity-weight", type=float, default=1.0)
    p.add_argument("--popularity-share", type=float, default=0.5)
    p.add_argument(
        "--explain-window",
        type=non_negative_int,
        default=0,
        help="latest history items paths may start from (0: model's history_len)",
    )
    p.add_argument("--rerank-weight", type=float, default=0.3)
    p.add_argument(
        "--entity-rerank",
        type=float,
        default=ENTITY_RERANK,
        help="weight of the served re-ranking toward person/company explanations (default: the API's)",
    )
    p.add_argument("--max-users", type=non_negative_int, default=0, help="explain only the first N users (0: all)")
    p.add_argument("--no-write", action="store_true", help="log the figures without writing them")
    _results(p)


def _num_nodes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-nodes",
        type=positive_int,
        default=None,
        help="simulated nodes (default: the dataset's user count, one user per node)",
    )


def add_fed(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument(
        "--presets",
        type=csv_of(sorted(PRESETS), "presets"),
        default=",".join(SUMMARY_KEYS),
        help=f"comma-separated, from {','.join(sorted(PRESETS))} (default: {','.join(SUMMARY_KEYS)})",
    )
    p.add_argument("--rounds", type=non_negative_int, default=0, help="override num-server-rounds of every preset")
    _num_nodes(p)
    _results(p)
    p.add_argument("--no-write", action="store_true", help="print the figures, do not write them")
    p.add_argument("--dp-overhead-only", action="store_true", help="only measure cost.dp_step_overhead")


SIM_SCALES = ("610", "943", "10000")  # simulations.bench_sim.SCALES


def add_sim(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="", help="data directory (default $FEDXREC_DATA_DIR, else ./data)")
    p.set_defaults(dataset=DEFAULT_DATASET)  # each scale names its own dataset
    p.add_argument(
        "--scales",
        type=csv_of(SIM_SCALES, "scales"),
        default=",".join(SIM_SCALES),
        help="node counts: 610 (ml-latest-small), 943 (ml-100k), 10000 (ml-100k's catalogue, resampled users)",
    )
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds per scale (the first is not timed)")
    p.add_argument("--work-dir", default="runs/bench_sim", help="where the synthetic data and the run logs go")
    _results(p)
    p.add_argument("--no-write", action="store_true", help="print the figures, do not write them")


def add_dp(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument(
        "--presets",
        type=csv_of(sorted(PRESETS), "presets"),
        default=",".join(DP_SUMMARY_KEYS),
        help=f"comma-separated, from {','.join(sorted(PRESETS))} (default: {','.join(DP_SUMMARY_KEYS)})",
    )
    p.add_argument(
        "--parts",
        type=csv_of(DP_PARTS, "parts"),
        default="presets",
        help="comma-separated: presets (the DP presets), curve (HR@10 against ε), ablation",
    )
    p.add_argument("--rounds", type=non_negative_int, default=0, help="shorter runs (0: each preset's own)")
    _results(p)


def add_api(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument(
        "--checkpoint",
        default=os.environ.get("FEDXREC_CHECKPOINT", ""),
        help="checkpoint to serve ($FEDXREC_CHECKPOINT, else the main job's best round)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="the run's data.split-seed (P1 split)")
    p.add_argument("--cache-dir", default=".cache/fedxrec", help="the run's data.cache-dir (persisted splits)")
    p.add_argument("--p1-only", action="store_true", help="only the P1 figures through /v1/score (no load test)")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--concurrency", default="1,32", help="comma-separated levels; the last is reported as api.rps")
    p.add_argument("--requests", type=positive_int, default=3000, help="requests per level")
    p.add_argument("--max-seconds", type=positive_float, default=60.0, help="time cap per level")
    p.add_argument("--warmup", type=non_negative_int, default=200)
    p.add_argument("--history-len", type=positive_int, default=20)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--server-log", default=None, help="server output file (default: a temp file)")
    _results(p)


def add_audit(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument(
        "--parts", type=csv_of(AUDIT_PARTS, "parts"), default=",".join(AUDIT_PARTS), help=", ".join(AUDIT_PARTS)
    )
    p.add_argument("--checkpoints", default="", help="results dir holding fed/<preset>/checkpoint (default: results/)")
    p.add_argument(
        "--presets",
        type=csv_of(AUDIT_PRESETS, "presets"),
        default=[],
        help="mia and leak: audit only these presets and keep the others' earlier figures (default: every one)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override (tests)")
    p.add_argument("--mia-users", type=non_negative_int, default=0, help="attacked users (0: every user)")
    p.add_argument("--mia-per-user", type=positive_int, default=20, help="members (and as many non-members) per user")
    p.add_argument("--mia-recent", type=positive_int, default=3, help="newest interactions the 'recent' attacker knows")
    p.add_argument("--leak-users", type=positive_int, default=40)
    p.add_argument("--replay-partition", type=non_negative_int, default=0, help="the replayed device's partition")
    p.add_argument("--replay-node-id", type=int, default=7_345_617_289_530_114_201, help="its Flower node id")
    p.add_argument("--replay-seeds", type=non_negative_int, default=256, help="also try the seeds 0..N-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-cases", default="corrupt_inputs,poisoned_update,supernode_killed,superlink_restart")
    _results(p)


def add_download(p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument("--kg-version", choices=KG_VERSIONS, default="dbpedia-live-2024", help="ml-100k's DBpedia KG")


def add_run(p: argparse.ArgumentParser) -> None:
    add_data(p)
    _num_nodes(p)
    p.add_argument("--rounds", type=positive_int, default=None, help="num-server-rounds (default: pyproject's 40)")
    p.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="run-config overrides, as `flwr run -c` (repeatable); other `flwr run` options go after `--`",
    )


ADDERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "core": add_core,
    "central": add_central,
    "kg": add_kg,
    "fed": add_fed,
    "dp": add_dp,
    "sim": add_sim,
    "api": add_api,
    "audit": add_audit,
    "download": add_download,
    "run": add_run,
}


def parser(command: str, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """A stand-alone parser of ``command``'s options (``python -m simulations.bench_<command>``)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    ADDERS[command](p)
    return p


def defaults(command: str) -> dict[str, Any]:
    """``command``'s option defaults, after argparse's type conversion."""
    return vars(parser(command, command).parse_args([]))


def resolve_data_dir(data_dir: str) -> Path:
    """``--data-dir``, else ``$FEDXREC_DATA_DIR``, else ``./data`` (shared.data.default_data_dir)."""
    return Path(data_dir or os.environ.get("FEDXREC_DATA_DIR", "data"))


def default_checkpoint(dataset: str) -> Path:
    """Where ``fedxrec central`` leaves the central model of ``dataset`` (what kg/api/serve read)."""
    return Path("runs") / ("central" if dataset == DEFAULT_DATASET else f"central-{dataset}") / "checkpoint"


def preset_checkpoint(preset: str, dataset: str) -> Path:
    """The best round of ``fedxrec bench fed --presets <preset>`` on ``dataset`` (results/fed/...)."""
    from simulations.results import RESULTS

    return RESULTS / "fed" / (preset if dataset == DEFAULT_DATASET else f"{dataset}-{preset}") / "best"


def served_checkpoint(dataset: str) -> Path:
    """The best round of the main job on ``dataset`` (``runs/fed/best``; what ``fedxrec serve`` serves)."""
    from server.best import default_checkpoint as best

    return best(dataset)


def num_users(dataset: str, data_dir: str, cache_dir: str = ".cache/fedxrec") -> int:
    """The users of ``dataset``'s evaluation split: the default number of nodes (one user per node)."""
    from shared.data import load_dataset
    from shared.splits import cached_split

    ds = load_dataset(dataset, resolve_data_dir(data_dir))
    return cached_split(ds.interactions, len(ds.catalogue), cache_dir).num_users


@contextlib.contextmanager
def clean_errors(prog: str) -> Iterator[None]:
    """Bad input (data, config, checkpoint errors) ends the command with one line and status 1, no traceback."""
    from shared.errors import FedxrecError

    try:
        yield
    except FedxrecError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def output(command: str, bench: str, args: argparse.Namespace) -> Any:
    """:func:`simulations.results.output_for` for ``args`` of ``command`` (see :data:`NEUTRAL`)."""
    from simulations.results import changed_settings, output_for

    changed = changed_settings(args, defaults(command), NEUTRAL[command])
    return output_for(
        bench, changed, dataset=args.dataset, results=args.results, write=not getattr(args, "no_write", False)
    )
