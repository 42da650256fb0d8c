"""The README's main job: the local federated simulation (ml-100k, one user per node) on its own SuperLink.

What it does, in order (each step is announced):

1. Resolves the data directory (``data.dir`` from ``-c``, else ``$FEDXREC_DATA_DIR``, else
   ``../shared/data`` where it holds ml-100k, else ``./data``) and passes it, absolute, to the app in
   the run config, with the outputs folder (``fed.out-dir``: ``$FEDXREC_RUNS_DIR`` or ``./runs``).
2. Loads the dataset and its split to count the users: ``num-supernodes`` is that count (one user
   per node) unless ``--num-supernodes`` gives fewer (each node then holds a contiguous group); more
   nodes than users, missing data or a bad config key is one error and exit status 2, before any
   process starts.
3. Builds (or loads) the item cache and the split, so the nodes and the server find them ready.
4. Starts its own ``flower-superlink --simulation`` on a free port of 127.0.0.1, with its own
   ``FLWR_HOME`` (``<runs>/flwr-home/<time>-<pid>/``) and its own Ray instance (``RAY_ADDRESS=local``;
   ``--ray-address`` attaches to an existing Ray cluster instead). It never connects to, nor stops,
   a SuperLink it did not start (e.g. Flower's shared local one on 127.0.0.1:39091).
5. ``flwr run . <its connection> --stream``: streams the progress lines (duplicates and Ray/Flower
   start-up noise filtered), then reads the run's final status from the SuperLink (``flwr ls``):
   a failed run exits 1 with the reason.
6. Stops exactly the processes it started (the SuperLink's process tree, by PID), also on Ctrl-C,
   SIGTERM or failure, and prints the privacy lines of the final table.

Arguments it does not know go to ``flwr run`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.best import run_name_for
from simulations.runner import ENV, REPO, app_defaults

#: the name of this run's SuperLink connection in its own ``$FLWR_HOME/config.toml``
CONNECTION = "fedxrec-local"
#: exit status for bad input found before anything starts (missing data, bad config, node count)
EXIT_INPUT = 2
#: Flower's switches that make a SuperLink also open legacy gRPC APIs on fixed default ports (9091-9093)
LEGACY_GRPC_SWITCHES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")
STARTUP_TIMEOUT = 60.0


class RunError(Exception):
    """Bad input or a failed step, reported as one message."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


def say(msg: str) -> None:
    print(f"fedxrec: {msg}", flush=True)


# ---------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options; everything else is passed to ``flwr run`` (returned second)."""
    ap = argparse.ArgumentParser(
        prog="python -m simulations.run_default",
        description="The local federated simulation on its own SuperLink (unknown options go to `flwr run`).",
    )
    ap.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="run-config overrides ([tool.flwr.app.config] keys), as for `flwr run -c`; may repeat",
    )
    ap.add_argument(
        "--num-supernodes",
        type=int,
        default=None,
        help="simulated nodes (default: the dataset's user count, one user per node; at most that count)",
    )
    ap.add_argument(
        "--federation-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="extra simulation settings for `flwr run --federation-config` (e.g. init-args-num-cpus=8)",
    )
    ap.add_argument(
        "--ray-address",
        default="local",
        help="Ray cluster for the simulation: 'local' (default: a new Ray instance of its own) or the "
        "address of a running Ray head, e.g. 127.0.0.1:6379 (see docs/federated.md)",
    )
    ap.add_argument(
        "--keep-flwr-home",
        action="store_true",
        help="keep this run's FLWR_HOME (SuperLink state, installed app) after a successful run",
    )
    return ap.parse_known_args(argv)


def parse_overrides(lines: Iterable[str]) -> dict[str, Any]:
    """The ``-c`` overrides as one flat dict, later lines winning.

    Each line is parsed on its own (Flower's ``parse_config_args`` merges lines shallowly, so two
    lines with keys under one namespace, e.g. ``data.dir`` and ``data.dataset``, would lose one).
    """
    from flwr.common.config import parse_config_args

    out: dict[str, Any] = {}
    for line in lines:
        try:
            out.update(parse_config_args([line]))
        except Exception as e:  # click.ClickException or a TOML error: one line, named
            raise RunError(f"cannot parse -c {line!r}: {getattr(e, 'message', e)}") from None
    return out


def render_overrides(cfg: Mapping[str, Any]) -> str:
    """One ``-c`` string (``key=value`` pairs, TOML values) for ``flwr run``."""
    parts = []
    for k, v in cfg.items():
        if isinstance(v, bool):
            val = "true" if v else "false"
        elif isinstance(v, (int, float)):
            val = repr(v)
        else:
            s = str(v)
            if "'" not in s:
                val = f"'{s}'"
            elif '"' not in s and "\\" not in s:
                val = json.dumps(s)
            else:
                raise RunError(f"run-config value of {k!r} cannot be passed to flwr run (both quote kinds): {s!r}")
        parts.append(f"{k}={val}")
    return " ".join(parts)


def resolve_data_dir(given: str = "") -> Path:
    """``data.dir`` if given, else ``$FEDXREC_DATA_DIR``, else ``../shared/data`` where it holds ml-100k, else ``./data``."""
    if given:
        return Path(given).expanduser().resolve()
    env = os.environ.get("FEDXREC_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    shared = REPO.parent / "shared" / "data"
    if (shared / "ml-100k" / "u.data").exists():
        return shared.resolve()
    return (REPO / "data").resolve()


def runs_dir() -> Path:
    return Path(os.environ.get("FEDXREC_RUNS_DIR") or REPO / "runs").resolve()


def _abs(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def effective_overrides(user: Mapping[str, Any]) -> dict[str, Any]:
    """The user's overrides, checked against the schema, with the paths made absolute.

    ``data.dir`` (resolved as :func:`resolve_data_dir`), ``data.cache-dir`` and ``fed.out-dir``
    always go to the app explicitly: the ServerApp and the nodes run in processes whose working
    directory and environment are the SuperLink's, not this command's.
    """
    schema = app_defaults()
    unknown = sorted(set(user) - set(schema))
    if unknown:
        raise RunError(
            f"unknown run-config key(s) {unknown}: the keys are those of [tool.flwr.app.config] in pyproject.toml"
        )
    out = dict(user)
    out["data.dir"] = str(resolve_data_dir(str(user.get("data.dir", ""))))
    out["data.cache-dir"] = _abs(str(user.get("data.cache-dir", schema["data.cache-dir"])), Path.cwd())
    out["fed.out-dir"] = _abs(str(user.get("fed.out-dir") or runs_dir()), Path.cwd())
    dataset = str(user.get("data.dataset", schema["data.dataset"]))
    if "fed.run-name" not in user:  # each dataset's main job has its own outputs (what serve and bench api read)
        out["fed.run-name"] = run_name_for(dataset)
    return out


# ------------------------------------------------------------------------------------------ preflight


@dataclass
class Preflight:
    dataset: str
    data_dir: Path
    num_users: int
    num_supernodes: int


def missing_data_message(name: str, data_dir: Path, err: Exception) -> str:
    needs = (
        f"{data_dir / 'ml-100k'}/u.data, u.item and u.genre (the GroupLens ml-100k files)"
        if name == "ml-100k"
        else f"{data_dir / name}/ratings.csv and movies.csv (a MovieLens CSV release)"
    )
    return (
        f"no usable data for data.dataset = {name!r}: {err}\n"
        f"  looked in {data_dir} (data.dir, else $FEDXREC_DATA_DIR, else ../shared/data, else ./data)\n"
        f"  it needs {needs}\n"
        "  supply it with FEDXREC_DATA_DIR=/path/to/data (or -c \"data.dir='/path/to/data'\"), "
        "or fetch ml-100k with `fedxrec download`"
    )


def preflight(cfg: Mapping[str, Any], num_supernodes: int | None) -> Preflight:
    """Config check, user count and node count, item cache: everything that can fail before a process starts.

    Raises
    ------
    RunError
        A bad config value, missing or malformed data, or more nodes than users.
    """
    from server.config import parse_server_config
    from shared.data import load_dataset
    from shared.errors import ConfigError, DataError
    from shared.pipeline import prepare
    from shared.splits import cached_split

    full = {**app_defaults(), **cfg}
    try:
        rc = parse_server_config(full)
    except (ConfigError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"bad run config: {e}") from None
    name, data_dir = rc.core.data.dataset, Path(rc.core.data.dir)
    say(f"loading data: {name} from {data_dir} …")
    try:
        ds = load_dataset(name, data_dir)
        split = cached_split(
            ds.interactions,
            len(ds.catalogue),
            rc.core.data.cache_dir,
            seed=rc.core.data.split_seed,
            cold_fraction=rc.core.data.cold_fraction,
        )
    except DataError as e:
        raise RunError(missing_data_message(name, data_dir, e)) from None
    users = split.num_users
    if num_supernodes is None:
        num_supernodes = users
    elif not 1 <= num_supernodes <= users:
        raise RunError(
            f"--num-supernodes {num_supernodes} does not fit data.dataset = {name!r}: its split has {users} users, "
            f"and each simulated node holds at least one (use 1..{users}; leave it out for one user per node)"
        )
    say(
        f"{name}: {users} users, {len(ds.catalogue)} items, {len(ds.interactions)} interactions; {num_supernodes} nodes"
    )
    say(f"building item cache ({rc.core.model.backbone}, cached in {rc.core.data.cache_dir}) …")
    t0 = time.time()
    try:
        prepare(rc.core, progress=False)  # the server and every node then load it from the cache
    except DataError as e:
        raise RunError(missing_data_message(name, data_dir, e)) from None
    say(f"item cache ready ({time.time() - t0:.0f} s)")
    return Preflight(name, data_dir, users, num_supernodes)


# ---------------------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success
    except httpx.HTTPError:
        return False


def stop_tree(proc: subprocess.Popen[Any], grace: float = 15.0) -> list[int]:
    """Stop ``proc`` (started with its own session) and every process below it; returns the PIDs stopped.

    Only ``proc`` and its descendants (found from parent links while they live: the SuperLink's
    SuperExec, the simulation process, its Ray processes) are signalled, each by PID; psutil's
    process objects check the start time, so a reused PID is never hit.
    """
    import psutil

    if proc.poll() is not None:
        return []
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    deadline = time.time() + grace
    gone, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:  # what ignored SIGTERM, and anything spawned meanwhile below a live member
        try:
            more = [*p.children(recursive=True), p]
        except psutil.NoSuchProcess:
            continue
        for q in more:
            try:
                q.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(more, timeout=max(1.0, deadline - time.time()))
    proc.wait(timeout=10)
    return [p.pid for p in tree]


@dataclass
class SuperLink:
    proc: subprocess.Popen[Any]
    port: int
    home: Path
    log: Path


def write_connection(home: Path, port: int) -> None:
    """``$FLWR_HOME/config.toml`` with one connection, :data:`CONNECTION`, to this run's SuperLink."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def start_superlink(home: Path, env: Mapping[str, str]) -> SuperLink:
    """``flower-superlink --insecure --simulation`` on a free port, in its own session, its cwd the repository.

    Retried on a new port if the chosen one was taken in between.
    """
    bin_dir = Path(sys.executable).parent
    log = home / "superlink.out"
    for _attempt in range(3):
        port = free_port()
        write_connection(home, port)
        cmd = [
            str(bin_dir / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--database",
            str(home / "state.db"),
            "--disable-runtime-dependency-installation",
        ]
        say(f"starting SuperLink on 127.0.0.1:{port} (FLWR_HOME {home}) …")
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                cmd, env=dict(env), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        link = SuperLink(proc, port, home, log)
        t0 = time.time()
        try:
            while time.time() - t0 < STARTUP_TIMEOUT:
                if proc.poll() is not None:
                    break
                if _healthy(port):
                    say(f"SuperLink {proc.pid} ready ({time.time() - t0:.1f} s)")
                    return link
                time.sleep(0.2)
        except BaseException:  # Ctrl-C / SIGTERM while it starts: it is ours, stop it
            stop_tree(proc)
            raise
        if proc.poll() is None:
            stop_tree(proc)
            raise RunError(
                f"the SuperLink did not answer on 127.0.0.1:{port} within {STARTUP_TIMEOUT:.0f} s; see {log}", 1
            )
        if "address already in use" not in log.read_text(errors="replace").lower():
            raise RunError(f"the SuperLink exited with {proc.returncode}:\n{_tail(log)}", 1)
    raise RunError(f"no free port for the SuperLink after 3 tries; see {log}", 1)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt while inside, so the ``finally`` clean-up runs."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------- log filtering

#: lines of Ray and Flower that say nothing about this run (each benign here); the unfiltered stream is
#: kept in ``$FLWR_HOME/stream.log``. Lines that look like errors are never dropped.
NOISE = [
    re.compile(p)
    for p in (
        # `flwr run` on fields of pyproject.toml it does not know, and its list lines
        r"Flower App configuration warnings",
        r"^- ",
        r"Starting logstream for run_id",
        # the simulation's federation banner (num-supernodes is always given here)
        r"default simulated SuperNodes changed",
        r"To change federation size|flwr federation simulation-config",
        # Flower's per-round strategy lines: the progress line of each round says it all; a round with
        # failures keeps its line
        r"configure_(train|evaluate): Sampled \d+ nodes",
        r"aggregate_(train|evaluate): Received \d+ results and 0 failures",
        # the DP strategy configures no federated evaluation on purpose (nodes refuse it under DP)
        r"fraction_evaluate is set to 0\.0",
        # transformers' weight-loading progress bar, in the server and in each Ray worker
        r"Loading weights",
        # Ray workers stopped at the end of the run
        r"Manually terminating ClientAppActor",
        # PyTorch, on Opacus' per-sample-gradient hooks: the cached item features never require gradients
        r"UserWarning: Full backward hook is firing",
        # Ray's notice about a future default (accelerator env vars of num_gpus=0 workers); no effect here
        r"FutureWarning: Tip: In future versions of Ray",
    )
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORKER = re.compile(r"^\(\w+ pid=\d+\) ?")
#: Flower's console prefix ("INFO :      ") and Ray's worker prefix ("(ClientAppActor pid=1234) ")
PREFIX = re.compile(r"^(\(\w+ pid=\d+\)\s*)?((DEBUG|INFO|WARNING|ERROR)\s*:\s*)?")
ERROR = re.compile(r"\bERROR\b|Traceback|[A-Z]\w*(Error|Exception)\b|\bfailed\b")


#: Flower's per-node report of a ClientApp exception (this header, the exception, its traceback): the server
#: itself logs one line per failed node with the node's error, and stops a run whose round mostly failed
NODE_TRACEBACK = re.compile(r"An exception was raised when processing a message by RayBackend")
#: a line that starts a new log record (ends a suppressed traceback block)
RECORD = re.compile(r"^(\(\w+ pid=\d+\)\s*)?((DEBUG|INFO|WARNING|ERROR)\s*:|\d\d/\d\d/\d{4} |fedxrec|Successfully)")


class LineFilter:
    """Which lines of the run's log stream are shown: not :data:`NOISE`, not Flower's per-node tracebacks.

    A line that looks like an error is shown unless it belongs to a per-node traceback block (each failed
    node's error is still named by the server's own warning line). Continuation lines (indented) of a
    dropped line are dropped with it. Everything is kept in ``$FLWR_HOME/stream.log``.
    """

    def __init__(self) -> None:
        self.in_node_traceback = False
        self.dropped_last = False
        self.told = False

    def keep(self, line: str) -> bool:
        plain = ANSI.sub("", line).rstrip()
        body = PREFIX.sub("", plain)
        if self.in_node_traceback:
            starts_record = RECORD.match(plain) is not None
            # Flower logs the exception (``ray::...``) and its traceback as two more ERROR records
            if not starts_record or body.startswith(("Traceback (most recent call last)", "ray::")):
                return False
            self.in_node_traceback = False
        if NODE_TRACEBACK.search(plain):
            self.in_node_traceback = True
            return False
        if not body.strip():
            return False
        if self.dropped_last and WORKER.sub("", plain)[:1].isspace():
            return False
        drop = not (ERROR.search(plain) and "and 0 failures" not in plain) and any(p.search(plain) for p in NOISE)
        self.dropped_last = drop
        return not drop


# ------------------------------------------------------------------------------------------- the run

STARTED = re.compile(r"Successfully started run (\d+)")


def run_status(env: Mapping[str, str], run_id: int) -> tuple[str, str]:
    """The run's status (``finished:completed``, ``finished:failed``, ...) and details, from ``flwr ls``."""
    flwr = str(Path(sys.executable).parent / "flwr")
    out = subprocess.run(
        [flwr, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    try:
        runs = json.loads(out.stdout)["runs"]
        row = next(r for r in runs if str(r.get("run-id")) == str(run_id))
        return str(row.get("status", "")), str(row.get("status-details", "") or "")
    except (ValueError, KeyError, StopIteration):
        return "unknown", (out.stdout + out.stderr).strip()[-500:]


def wait_finished(env: Mapping[str, str], run_id: int, timeout: float = 30.0) -> tuple[str, str]:
    """The status once it is ``finished:*`` (the log stream can end a moment before the status is pushed)."""
    t0 = time.time()
    status, details = run_status(env, run_id)
    while not status.startswith("finished") and time.time() - t0 < timeout:
        time.sleep(1.0)
        status, details = run_status(env, run_id)
    return status, details


def child_env(home: Path, ray_address: str) -> dict[str, str]:
    env = {**os.environ, **ENV}
    for k in LEGACY_GRPC_SWITCHES:
        env.pop(k, None)
    env["FLWR_HOME"] = str(home)
    env["RAY_ADDRESS"] = ray_address  # 'local': never attach to another user's `ray start` cluster
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def flwr_run(
    env: Mapping[str, str], overrides: Mapping[str, Any], federation: list[str], extra: list[str]
) -> tuple[int, int | None]:
    """``flwr run`` against this run's SuperLink, output filtered; returns its exit status and the run id."""
    cmd = [
        str(Path(sys.executable).parent / "flwr"),
        "run",
        str(REPO),
        CONNECTION,
        "--stream",
        "--federation-config",
        " ".join(federation),
        "-c",
        render_overrides(overrides),
        *extra,
    ]
    run_id: int | None = None
    filt = LineFilter()
    raw = open(Path(env["FLWR_HOME"]) / "stream.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, env=dict(env), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            raw.write(line)
            if run_id is None and (m := STARTED.search(line)):
                run_id = int(m.group(1))
            if filt.keep(line):
                print(line.rstrip("\n"), flush=True)
        return proc.wait(), run_id
    finally:
        raw.close()
        if proc.poll() is None:  # interrupted: flwr run only streams logs, stop it by its PID
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _main(args, extra)
    except RunError as e:
        print(f"fedxrec: error: {e}", file=sys.stderr, flush=True)
        return e.code
    except KeyboardInterrupt:  # before any process started
        print("fedxrec: interrupted", file=sys.stderr, flush=True)
        return 130


def _main(args: argparse.Namespace, extra: list[str]) -> int:
    for k, v in ENV.items():  # this process loads data and the backbone too
        os.environ.setdefault(k, v)
    overrides = effective_overrides(parse_overrides(args.run_config))
    federation = parse_overrides(args.federation_config)
    if "num-supernodes" in federation:
        if args.num_supernodes is not None and int(federation["num-supernodes"]) != args.num_supernodes:
            raise RunError("--num-supernodes and --federation-config num-supernodes disagree")
        args.num_supernodes = int(federation.pop("num-supernodes"))
    if args.ray_address != "local":
        own = sorted(k for k in federation if k.startswith("init-args-num-"))
        if own:  # ray.init refuses resources when it connects to a running cluster
            raise RunError(
                f"--federation-config {own} sizes a new Ray instance; with --ray-address the cluster's own resources apply"
            )
    pre = preflight(overrides, args.num_supernodes)
    fed_cfg = [f"num-supernodes={pre.num_supernodes}", "client-resources-num-cpus=1"]
    fed_cfg += [f"{k}={render_overrides({k: v}).split('=', 1)[1]}" for k, v in federation.items()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    home = runs_dir() / "flwr-home" / f"{stamp}-{os.getpid()}"
    env = child_env(home, args.ray_address)
    if args.ray_address != "local":
        say(f"the simulation attaches to the Ray cluster at {args.ray_address}")
    out = Path(overrides["fed.out-dir"]) / str(overrides["fed.run-name"])
    link: SuperLink | None = None
    ok = False
    with terminate_as_interrupt():
        try:
            link = start_superlink(home, env)
            say(f"outputs in {out}; SuperLink log {link.log}")
            say(f"run config overrides: {render_overrides(overrides)}")
            code, run_id = flwr_run(env, overrides, fed_cfg, extra)
            if run_id is None:
                raise RunError(f"flwr run exited with {code} before the run started", code or 1)
            status, details = wait_finished(env, run_id)
            if status != "finished:completed":
                raise RunError(
                    f"run {run_id} {status or 'ended'}: {details or 'no details'} (SuperLink log {link.log})", 1
                )
            ok = code == 0
            if not ok:
                raise RunError(f"flwr run exited with {code}", code)
        except KeyboardInterrupt:
            print("", flush=True)
            say("interrupted; stopping the SuperLink")
            raise RunError("interrupted", 130) from None
        finally:
            if link is not None:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut this short
                    signal.signal(sig, signal.SIG_IGN)
                pids = stop_tree(link.proc)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                say(f"stopped the SuperLink {link.proc.pid} and its {max(len(pids) - 1, 0)} child processes")
                if ok and not args.keep_flwr_home:
                    _clean_home(home)
    print(privacy_summary(out / "summary.json"))
    return 0


def _clean_home(home: Path) -> None:
    """Remove this run's FLWR_HOME (installed app copy, state), keeping the SuperLink log and the raw stream."""
    import shutil

    for p in home.iterdir():
        if p.name not in ("superlink.out", "stream.log"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _run_name(args: list[str]) -> str:
    """``fed.run-name`` from ``-c`` overrides (default: ``fed``, or ``fed-<dataset>`` for another dataset)."""
    ns, _ = parse_args(args)
    user = parse_overrides(ns.run_config)
    return str(user.get("fed.run-name", run_name_for(str(user.get("data.dataset", app_defaults()["data.dataset"])))))


def privacy_summary(path: Path) -> str:
    """The privacy lines of the final table: ε, δ, unit, trust, and the non-private reference figure."""
    if not path.is_file():
        return f"(no run summary at {path})"
    s = json.loads(path.read_text())
    last, best = s.get("last") or {}, s.get("best") or {}
    lines = ["", "privacy"]
    if "epsilon" in last:
        lines += [
            f"  record-level DP: ε = {last['epsilon']:.2f}, δ = {last['delta']:g} (the most-sampled device; "
            "every device's own accountant agrees)",
            "  privacy unit: one interaction (add/remove); ε covers everything a device sent in the run",
            "  trust: none (local DP-SGD: each device noises its own uploads)"
            if last.get("dp-mode", "local") == "local"
            else "  trust: SecAgg+ hides each share, devices add their noise share honestly",
        ]
    elif "user-dp-epsilon" in last:
        lines.append(f"  user-level DP: ε = {last['user-dp-epsilon']:.2f} (trust: the server adds the noise)")
    else:
        lines.append("  NOT PRIVATE: dp.enabled = false (uploads are exact gradient information)")
    if best:
        lines.append(f"  figures selected by: {s.get('best-selected-by', 'federated evaluation')}")
    ref = _reference()
    lines.append(f"  non-private reference (results/summary.json runs.fed): {ref}")
    return "\n".join(lines)


def _reference() -> str:
    path = REPO / "results" / "summary.json"
    try:
        fed = json.loads(path.read_text())["runs"]["fed"]
        return f"test HR@10 {fed['hr@10']:.3f} / NDCG@10 {fed['ndcg@10']:.3f} (`{fed.get('command', 'bench_fed')}`)"
    except (OSError, KeyError, ValueError):
        return f"not measured yet ({path}: run python -m simulations.bench_fed --presets fed)"


if __name__ == "__main__":
    raise SystemExit(main())
