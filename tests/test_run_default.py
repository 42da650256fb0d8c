"""The main job: its own SuperLink, preflight checks, failure exit status, log filter, final privacy lines."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_tiny_ml100k

from server.strategy import Dropped, NodeFailures, RoundReport, check_failures, error_line
from simulations import run_default
from simulations.run_default import _run_name, privacy_summary


def test_the_final_table_states_the_privacy_of_the_run(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    row = {"round": 40, "epsilon": 7.93, "delta": 1e-5, "central": {"val-hr@10": 0.5}}
    path.write_text(json.dumps({"best": row, "last": row, "best-selected-by": "experimenter (central validation)"}))
    text = privacy_summary(path)
    assert "ε = 7.93, δ = 1e-05" in text and "one interaction" in text and "trust: none" in text
    assert "experimenter" in text and "non-private reference" in text
    plain = {"round": 3, "central": {}}
    path.write_text(json.dumps({"best": plain, "last": plain}))
    assert "NOT PRIVATE" in privacy_summary(path)
    assert "no run summary" in privacy_summary(tmp_path / "missing.json")


def test_the_run_name_comes_from_the_overrides() -> None:
    assert _run_name([]) == "fed"
    assert _run_name(["-c", "num-server-rounds=3 fed.run-name='abc'"]) == "abc"
    # another dataset's main job has its own outputs (what `fedxrec serve --dataset` serves)
    assert _run_name(["-c", "data.dataset='ml-latest-small'"]) == "fed-ml-latest-small"
    assert _run_name(["-c", "data.dataset='ml-latest-small' fed.run-name='x'"]) == "x"


# --------------------------------------------------------------------------------------------------
# The main job on its own SuperLink: options, preflight, log filter, and (slow) real runs


REPO = Path(__file__).resolve().parents[1]


def test_overrides_merge_per_line_and_render_back() -> None:
    # Flower's own parser merges lines shallowly (data.dir would drop data.dataset): ours keeps both
    cfg = run_default.parse_overrides(["data.dataset='ml-latest-small' num-server-rounds=3", "data.dir='/a b/c'"])
    assert cfg == {"data.dataset": "ml-latest-small", "num-server-rounds": 3, "data.dir": "/a b/c"}
    assert run_default.parse_overrides(
        [run_default.render_overrides({**cfg, "dp.enabled": False, "dp.delta": 1e-5})]
    ) == {
        **cfg,
        "dp.enabled": False,
        "dp.delta": 1e-5,
    }
    with pytest.raises(run_default.RunError, match="unknown run-config key"):
        run_default.effective_overrides({"no.such-key": 1})


def test_the_data_dir_and_outputs_go_to_the_app_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDXREC_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("FEDXREC_RUNS_DIR", str(tmp_path / "r"))
    monkeypatch.chdir(tmp_path)
    out = run_default.effective_overrides({})
    assert out["data.dir"] == str(tmp_path / "d") and out["fed.out-dir"] == str(tmp_path / "r")
    assert out["data.cache-dir"] == str(tmp_path / ".cache" / "fedxrec")
    assert run_default.effective_overrides({"data.dir": "x"})["data.dir"] == str(tmp_path / "x")  # -c wins


def test_too_many_nodes_fail_before_any_process_starts(
    tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDXREC_RUNS_DIR", str(tmp_path / "runs"))
    data = write_tiny_ml100k(tmp_path / "data", users=8, per_user=15)
    c = f"data.dir='{data}' data.cache-dir='{tmp_path / 'cache'}' model.backbone='{tiny_bert}'"
    assert run_default.main(["--num-supernodes", "9", "-c", c]) == run_default.EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--num-supernodes 9 does not fit data.dataset = 'ml-100k'" in err
    assert "its split has 8 users" in err
    assert not (tmp_path / "runs" / "flwr-home").exists()  # no SuperLink was started
    assert not list((tmp_path / "cache").glob("items/*"))  # nor was the item cache built


def test_a_ray_cluster_brings_its_own_resources(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--ray-address", "127.0.0.1:6379", "--federation-config", "init-args-num-cpus=4"]
    assert run_default.main(args) == run_default.EXIT_INPUT
    assert "with --ray-address the cluster's own resources apply" in capsys.readouterr().err


def test_missing_data_is_one_message_naming_the_files_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDXREC_RUNS_DIR", str(tmp_path / "runs"))
    code = run_default.main(["-c", f"data.dir='{tmp_path / 'empty'}' data.dataset='ml-latest-small'"])
    err = capsys.readouterr().err
    assert code == run_default.EXIT_INPUT and err.count("error:") == 1 and "Traceback" not in err
    assert f"looked in {tmp_path / 'empty'}" in err and "ratings.csv and movies.csv" in err
    assert "FEDXREC_DATA_DIR" in err and "fedxrec download" in err
    assert not (tmp_path / "runs" / "flwr-home").exists()


RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1, ip=x)\n"
    '  File "/x/client/privacy.py", line 99, in check_run\n    raise PrivacyRefused(\n'
    "client.privacy.PrivacyRefused: the run's dp.delta 0.0001 is above this device's dp-max-delta 1e-05\n\n"
    "The above exception was the direct cause of the following exception:\n\n"
    "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. Message: the run's dp.delta'>"
)


def test_a_round_where_most_nodes_fail_stops_with_the_node_error() -> None:
    assert error_line(RAY_REASON) == (
        "client.privacy.PrivacyRefused: the run's dp.delta 0.0001 is above this device's dp-max-delta 1e-05"
    )
    assert error_line("plain reason") == "plain reason"
    every = RoundReport(replies=3, errors=[Dropped(i, error_line(RAY_REASON)) for i in range(3)])
    with pytest.raises(NodeFailures, match=r"round 1: 3 of 3 nodes failed .*PrivacyRefused: the run's dp.delta"):
        check_failures(1, every)
    check_failures(2, RoundReport(replies=2, errors=[Dropped(1, "x")]))  # one of two: tolerated
    check_failures(3, RoundReport(replies=0))


def test_the_stream_filter_drops_noise_and_node_tracebacks_not_errors() -> None:
    lines = [
        "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
        "\x1b[92mINFO \x1b[0m:      configure_train: Sampled 4 nodes (out of 4)",
        "\x1b[92mINFO \x1b[0m:      aggregate_train: Received 4 results and 0 failures",
        "\x1b[92mINFO \x1b[0m:      aggregate_train: Received 0 results and 4 failures",
        "/x/ray/_private/worker.py:2051: FutureWarning: Tip: In future versions of Ray, Ray will no longer "
        "override ... turn off this error message, set RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0",
        "  warnings.warn(",
        "(ClientAppActor pid=7) /x/client/train.py:264: UserWarning: Full backward hook is firing when ...",
        "(ClientAppActor pid=7)   per.sum().backward()",
        "\x1b[91mERROR \x1b[0m:     An exception was raised when processing a message by RayBackend",
        "\x1b[91mERROR \x1b[0m:     ray::ClientAppActor.run() (pid=1)",
        '  File "/x/client/privacy.py", line 99, in check_run',
        "client.privacy.PrivacyRefused: the run's dp.delta 0.0001 is above",
        "\x1b[91mERROR \x1b[0m:     Traceback (most recent call last):",
        '  File "/x/vce_api.py", line 132, in worker',
        "12/02/2026 07:24:25:WARNING:round 1: node 3 failed: client.privacy.PrivacyRefused: the run's dp.delta",
        "\x1b[92mINFO \x1b[0m:      round   1/2 | eps 6.36 | 40.2s | ETA 1s",
        "\x1b[91mERROR \x1b[0m:     Simulation raised an exception",
        "Traceback (most recent call last):",
        "server.strategy.NodeFailures: round 1: 4 of 4 nodes failed",
    ]
    filt = run_default.LineFilter()
    shown = [ln for ln in lines if filt.keep(ln)]
    assert shown == [lines[3], *lines[14:]]


# ------------------------------------------------------------------------------------ real processes

BIN = Path(sys.executable).parent


def _tiny_args(tmp_path: Path, tiny_bert: str, *extra_c: str) -> list[str]:
    data = write_tiny_ml100k(tmp_path / "data", users=8, per_user=15)
    c = (
        f"num-server-rounds=1 fed.central-eval=false data.dir='{data}' data.cache-dir='{tmp_path / 'cache'}' "
        f"model.backbone='{tiny_bert}' model.dim=16 model.bottleneck=8 model.history-len=8 train.negatives=8 "
        "local.batch-size=4"
    )
    # the extras in a later -c line: they may override a key of the first (a repeated key in one line is a TOML error)
    later = ["-c", " ".join(extra_c)] if extra_c else []
    # two nodes on one Ray worker: the smallest simulation
    return ["--num-supernodes", "2", "--federation-config", "init-args-num-cpus=1", "-c", c, *later]


def _run_default(tmp_path: Path, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDXREC_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(REPO)}
    env.pop("FLWR_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "simulations.run_default", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _processes_with_home(home: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("FLWR_HOME") == home:
                found.append(p.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _started(out: str) -> tuple[int, int, str]:
    m = re.search(r"starting SuperLink on 127\.0\.0\.1:(\d+) \(FLWR_HOME (.+?)\)", out)
    pid = re.search(r"SuperLink (\d+) ready", out)
    assert m and pid, out[-3000:]
    return int(m.group(1)), int(pid.group(1)), m.group(2)


class _Listener:
    """Something else listening on Flower's shared local port 39091: a socket server we start, by PID
    (or, where the port is already taken, whatever holds it)."""

    PORT = 39091

    def __init__(self) -> None:
        code = (
            "import socket,sys,time\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"try:\n s.bind(('127.0.0.1', {self.PORT})); s.listen()\n"
            "except OSError:\n print('busy', flush=True); sys.exit(0)\n"
            "print('ok', flush=True)\n"
            "while True:\n c,_=s.accept(); c.close()\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.ours = self.proc.stdout.readline().strip() == "ok"

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.PORT)) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)


@pytest.mark.slow
def test_the_main_job_runs_on_its_own_superlink_and_leaves_others_alone(tmp_path: Path, tiny_bert: str) -> None:
    other = _Listener()
    try:
        assert other.listening()
        run = _run_default(tmp_path, _tiny_args(tmp_path, tiny_bert, "fed.run-name='own'"))
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-4000:]
        port, pid, home = _started(out)
        assert port != _Listener.PORT and home.startswith(str(tmp_path / "runs" / "flwr-home"))
        assert other.listening() and (not other.ours or other.proc.poll() is None)  # untouched
        assert "39091" not in out  # never connected to, nor mentioned, the shared local SuperLink
        assert re.search(r"round +1/1 \| eps \d", out) and "privacy" in out
        rows = (tmp_path / "runs" / "own" / "rounds.jsonl").read_text().splitlines()
        assert len(rows) == 1 and json.loads(rows[0])["failed"] == 0
        # every INFO line once (Flower's logger used to print twice, through opacus' root handler)
        progress = [ln for ln in out.splitlines() if "round   1/1 |" in ln]
        assert len(progress) == 1, progress
        # what it started is gone, by the environment it gave them
        assert f"stopped the SuperLink {pid}" in out
        assert _processes_with_home(home) == []
    finally:
        other.stop()


@pytest.mark.slow
def test_a_run_whose_nodes_all_fail_exits_non_zero_with_their_error(tmp_path: Path, tiny_bert: str) -> None:
    # every simulated device refuses a δ above its floor (1e-5); the server accepts it: a node-side failure
    run = _run_default(tmp_path, _tiny_args(tmp_path, tiny_bert, "fed.run-name='bad' dp.delta=0.0001"))
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-4000:]
    assert "round 1: 2 of 2 nodes failed" in out and "PrivacyRefused: the run's dp.delta 0.0001" in out
    assert re.search(r"error: run \d+ finished:failed", out)
    assert "An exception was raised when processing a message by RayBackend" not in out  # per-node dumps filtered
    assert not (tmp_path / "runs" / "bad" / "rounds.jsonl").read_text().strip()  # no NaN round was logged
    _, _, home = _started(out)
    assert _processes_with_home(home) == []
    assert "An exception was raised" in (Path(home) / "stream.log").read_text()  # the raw stream keeps them


@pytest.mark.slow
def test_sigterm_stops_what_it_started(tmp_path: Path, tiny_bert: str) -> None:
    env = {**os.environ, "FEDXREC_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(REPO)}
    args = _tiny_args(tmp_path, tiny_bert, "num-server-rounds=50 fed.run-name='term'")
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.run_default", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    t0 = time.time()
    for line in proc.stdout:  # wait until the simulation is under way
        seen.append(line)
        if "round 1/50: training" in line or time.time() - t0 > 200:
            break
    os.kill(proc.pid, signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out[-3000:]
    _, pid, home = _started(out)
    assert f"stopped the SuperLink {pid}" in out and _processes_with_home(home) == []
