"""The simulation-cost bench: its synthetic users, its measurement on a tiny private run, and where it writes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import write_tiny_ml100k
from fedfixtures import tiny_overrides

from simulations import options
from simulations.bench_sim import measure, synthetic_ml100k
from simulations.results import RUNS


def _histories(path: Path) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for line in path.read_text().splitlines():
        user, item, rating, ts = line.split("\t")
        out.setdefault(user, Counter())[(item, float(rating), ts)] += 1
    return out


def test_synthetic_users_are_copies_of_real_users(tmp_path: Path) -> None:
    src = write_tiny_ml100k(tmp_path / "src", users=8, per_user=15)
    out = synthetic_ml100k(src, 25, tmp_path / "syn", seed=3)
    real = _histories(src / "ml-100k" / "u.data")
    fake = _histories(out / "ml-100k" / "u.data")
    assert sorted(fake, key=int) == [str(k) for k in range(1, 26)]
    assert all(h in real.values() for h in fake.values())  # each one a real user's whole history
    assert len({tuple(sorted(h.items())) for h in fake.values()}) > 1
    assert (out / "ml-100k" / "u.item").read_bytes() == (src / "ml-100k" / "u.item").read_bytes()
    assert (out / "kg").resolve() == (src / "kg").resolve()
    # the same request again keeps the complete directory; another size rebuilds it
    mtime = (out / "ml-100k" / "u.data").stat().st_mtime_ns
    assert synthetic_ml100k(src, 25, tmp_path / "syn", seed=3) == out
    assert (out / "ml-100k" / "u.data").stat().st_mtime_ns == mtime
    synthetic_ml100k(src, 30, tmp_path / "syn", seed=3)
    assert len(_histories(out / "ml-100k" / "u.data")) == 30
    assert not (tmp_path / "syn.tmp").exists()


@pytest.mark.slow
def test_measure_times_a_private_run_per_round_and_client(tmp_path: Path, tiny_bert: str) -> None:
    base = tiny_overrides(tmp_path, tiny_bert)
    data = synthetic_ml100k(Path(base["data.dir"]), 12, tmp_path / "syn")
    ov = {**base, "data.dir": str(data), "num-server-rounds": 3, "local.batch-size": 4}
    fig = measure("sim-12", ov, 12, tmp_path / "runs")
    # the main job's recipe (private, every node in every round): rounds 2 and 3 are timed
    assert fig["nodes"] == 12 and fig["rounds"] == 3 and fig["failed_or_dropped"] == 0
    assert fig["clients_per_round"] == 12
    assert 0 < fig["seconds_per_client_round"] < fig["round_seconds"] < fig["seconds"]
    assert fig["seconds_per_client_round"] == pytest.approx(fig["round_seconds"] / 12)
    assert fig["upload_bytes_per_client_round"] > 0


def test_sim_bench_writes_results_only_at_its_documented_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    documented = options.output("sim", "bench_sim", options.parser("sim", "x").parse_args(["--scales", "943"]))
    assert documented.documented and documented.root != RUNS / "bench_sim"
    adhoc = options.output("sim", "bench_sim", options.parser("sim", "x").parse_args(["--rounds", "2"]))
    assert not adhoc.documented and adhoc.root == RUNS / "bench_sim"
    assert "--rounds=2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        options.parser("sim", "x").parse_args(["--scales", "500"])
    assert "unknown scales '500'" in capsys.readouterr().err
