"""The ``fedxrec`` command: help of every subcommand, clean errors, and where benchmark figures go."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, write_tiny_ml100k

import simulations.report
import simulations.results
from shared.config import DATASETS, DEFAULT_DATASET
from simulations import cli, options
from simulations.results import changed_settings, output_for

#: command -> an option its help must list
COMMANDS = {
    "": "COMMAND",
    "run": "--num-nodes",
    "central": "--epochs",
    "serve": "--checkpoint",
    "download": "--kg-version",
    "bench": "PART",
    "bench core": "--runs",
    "bench kg": "--parts",
    "bench fed": "--presets",
    "bench dp": "--parts",
    "bench api": "--concurrency",
    "audit": "--mia-users",
}
HEAVY = ("torch", "flwr", "transformers", "opacus", "fastapi", "uvicorn")


def fedxrec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_names_the_subcommand_and_its_options(command: str) -> None:
    r = fedxrec(*command.split(), "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: fedxrec {command}".rstrip() + " ")
    assert COMMANDS[command] in r.stdout
    if command not in ("", "bench", "serve"):
        assert "--dataset" in r.stdout and "--data-dir" in r.stdout
    assert "--quick" not in r.stdout


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\nfrom simulations.cli import main\n"
        f"for argv in {[c.split() + ['--help'] for c in COMMANDS]!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["central", "--dataset", "ml-1m"], "argument --dataset: invalid choice: 'ml-1m'"),
        (["bench", "core", "--epochs", "0"], "argument --epochs: must be > 0, got 0"),
        (["bench", "fed", "--presets", "fed,nope"], "unknown presets 'nope'"),
        (["bench", "fed", "--num-nodes", "many"], "argument --num-nodes: expected a whole number, got 'many'"),
        (["audit", "--parts", "mia,xss"], "unknown parts 'xss'"),
        (["bench"], "the following arguments are required: PART"),
    ],
)
def test_bad_options_are_one_line_errors(argv: list[str], message: str) -> None:
    r = fedxrec(*argv)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"fedxrec {' '.join(argv[: 2 if argv[0] == 'bench' else 1])}")


def test_download_refuses_a_dataset_it_cannot_download(tmp_path: Path) -> None:
    r = fedxrec("download", "--dataset", "ml-latest-small", "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot download 'ml-latest-small'" in r.stderr and str(tmp_path / "ml-latest-small") in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_data_is_a_one_line_error(tmp_path: Path) -> None:
    r = fedxrec("run", "--dataset", "ml-latest-small", "--data-dir", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(tmp_path / "ml-latest-small") in errors[0]


def test_run_passes_the_dataset_and_node_count_to_the_main_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import simulations.run_default

    seen: dict[str, Any] = {}

    def fake(argv: list[str]) -> int:
        seen.update(argv=argv)
        return 0

    monkeypatch.setattr(simulations.run_default, "main", fake)
    monkeypatch.chdir(tmp_path)  # the split cache
    data = write_tiny_ml100k(tmp_path / "data", users=5)
    argv = ["run", "--data-dir", str(data), "--rounds", "3", "-c", "fed.run-name='x'", "--", "--stream"]
    assert cli.main(argv) == 0
    assert seen["argv"] == [
        "-c",
        f'data.dir="{data.resolve()}" num-server-rounds=3',
        "-c",
        "fed.run-name='x'",
        "--stream",
    ]
    assert cli.main(["run", "--data-dir", str(data), "--num-nodes", "2"]) == 0
    # the node count is checked against the dataset's users by run_default, before anything starts
    assert seen == {"argv": ["-c", f'data.dir="{data.resolve()}"', "--num-supernodes", "2"]}


def test_serve_sets_the_dataset_for_its_workers_and_serves_its_main_jobs_best_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from server.api.settings import get_settings

    for name in ("CHECKPOINT", "DATASET", "DATA_DIR", "PORT"):
        monkeypatch.setenv(f"FEDXREC_{name}", "")  # so that serve's settings are undone after the test
        monkeypatch.delenv(f"FEDXREC_{name}")
    monkeypatch.setenv("FEDXREC_RUNS_DIR", str(tmp_path / "runs"))
    best = tmp_path / "runs" / "fed-ml-latest-small" / "best"  # `fedxrec run --dataset ml-latest-small` writes it
    best.mkdir(parents=True)
    (best / "fedxrec.json").write_text("{}")
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    assert cli.main(["serve", "--dataset", "ml-latest-small", "--port", "8123"]) == 0
    assert os.environ["FEDXREC_DATASET"] == "ml-latest-small"
    assert get_settings().checkpoint.resolve() == best.resolve()
    assert calls and calls[0]["port"] == 8123
    get_settings.cache_clear()


# ------------------------------------------------------------------------------ where figures go


def test_documented_settings_write_results_and_others_write_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulations.results, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(simulations.results, "RUNS", tmp_path / "runs")
    fed = options.parser("fed", "bench_fed")

    def where(*argv: str) -> simulations.results.Output:
        args = fed.parse_args(list(argv))
        changed = changed_settings(args, options.defaults("fed"), options.NEUTRAL["fed"])
        return output_for("bench_fed", changed, dataset=args.dataset, announce=False)

    # a subset of the documented presets, another data dir or dataset: still the documented figures
    for argv in ([], ["--presets", "fed"], ["--data-dir", "/x", "--dataset", "ml-latest-small"]):
        assert where(*argv).documented and where(*argv).root == tmp_path / "results"
    out = where("--presets", "fed", "--rounds", "5", "--num-nodes", "10")
    assert not out.documented and out.root == tmp_path / "runs" / "bench_fed"
    assert out.changed == {"rounds": 5, "num_nodes": 10}
    # another dataset: under datasets.<name>., the default dataset at the top level
    other = where("--dataset", "ml-latest-small")
    other.merge({"runs": {"fed": {"hr@10": 0.5}}})
    where().merge({"runs": {"fed": {"hr@10": 0.6}}})
    data = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert data == {"runs": {"fed": {"hr@10": 0.6}}, "datasets": {"ml-latest-small": {"runs": {"fed": {"hr@10": 0.5}}}}}
    assert other.run_dir("fed") == tmp_path / "results" / "fed" / "ml-latest-small-fed"
    assert other.keys("runs", "fed") == ["datasets", "ml-latest-small", "runs", "fed"]


def test_every_benchmark_has_a_classified_option_set() -> None:
    for command in ("core", "central", "kg", "fed", "dp", "api", "audit", "sim"):
        defaults = options.defaults(command)
        assert {"dataset", "data_dir"} <= set(defaults) and defaults["dataset"] == DEFAULT_DATASET
        assert options.NEUTRAL[command] - set(defaults) <= {"threads", "no_write", "results", "checkpoint", "runs"}
    assert DEFAULT_DATASET == DATASETS[0]


def _tiny_csv_release(src: Path, dest: Path) -> Path:
    """The tiny ml-100k data rewritten as a MovieLens CSV release (ratings.csv, movies.csv)."""
    dest.mkdir(parents=True)
    rows = [line.split("\t") for line in (src / "ml-100k" / "u.data").read_text().splitlines()]
    (dest / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows)
    )
    items = [line.split("|") for line in (src / "ml-100k" / "u.item").read_text(encoding="latin-1").splitlines()]
    (dest / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f'{f[0]},"{f[1]}",Drama\n' for f in items), encoding="utf-8"
    )
    return dest.parent


@pytest.mark.slow
def test_bench_core_ad_hoc_run_leaves_results_alone(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fedxrec bench core --runs mostpop``: documented figures to results/; ``--bpr-epochs 5`` to runs/."""
    from simulations import bench_core

    results, runs = tmp_path / "results", tmp_path / "runs"
    monkeypatch.setattr(simulations.results, "RESULTS", results)
    monkeypatch.setattr(simulations.results, "RUNS", runs)
    monkeypatch.setattr(simulations.report, "RESULTS", results)
    monkeypatch.chdir(tmp_path)  # split and prefix caches
    results.mkdir()
    committed = {"runs": {"mostpop": {"hr@10": 0.405}, "fed": {"hr@10": 0.7}}}
    (results / "summary.json").write_text(json.dumps(committed))

    assert bench_core.main(["--runs", "mostpop", "--data-dir", str(tiny_data), "--bpr-epochs", "5"]) == 0
    assert json.loads((results / "summary.json").read_text()) == committed  # untouched
    ad_hoc = json.loads((runs / "bench_core" / "summary.json").read_text())
    assert set(ad_hoc["runs"]) == {"mostpop"} and 0.0 <= ad_hoc["runs"]["mostpop"]["hr@10"] <= 1.0

    assert bench_core.main(["--runs", "mostpop", "--data-dir", str(tiny_data)]) == 0
    data = json.loads((results / "summary.json").read_text())
    assert data["runs"]["fed"] == {"hr@10": 0.7}  # other keys kept
    assert data["runs"]["mostpop"]["hr@10"] == ad_hoc["runs"]["mostpop"]["hr@10"]  # the same run, now documented
    machine = data["runs"]["mostpop"]["provenance"]["machine"]  # what its speed depends on
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1 and isinstance(machine["bf16_native"], bool)
    assert (results / "README.md").exists()

    # another dataset: under datasets.<name>. of results/summary.json, the top level unchanged
    csv_root = _tiny_csv_release(tiny_data, tmp_path / "csv" / "ml-latest-small")
    args = ["--runs", "mostpop", "--dataset", "ml-latest-small", "--data-dir", str(csv_root)]
    assert bench_core.main(args) == 0
    after = json.loads((results / "summary.json").read_text())
    assert after["runs"] == data["runs"]
    assert set(after["datasets"]["ml-latest-small"]["runs"]) == {"mostpop"}


def test_central_is_bench_core_with_the_central_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from simulations import bench_core

    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(bench_core, "run", lambda args, command: seen.append(args) or 0)
    assert cli.main(["central", "--epochs", "3", "--dataset", "ml-latest-small"]) == 0
    assert seen[0].runs == list(options.CENTRAL_RUNS) and seen[0].epochs == 3
    assert seen[0].dataset == "ml-latest-small"
