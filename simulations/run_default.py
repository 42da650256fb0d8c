"""The README's main job: ``flwr run .`` on the local simulation (ml-100k, one user per node).

Runs ``flwr run . --stream`` with 943 simulated SuperNodes (one CPU each), streams its per-round
progress lines and final summary table, then stops the local SuperLink that ``flwr run`` started
(it would outlive the command) by its PID. Extra arguments go to ``flwr run`` (e.g.
``-c "num-server-rounds=5"``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from simulations.runner import ENV, REPO

NUM_SUPERNODES = 943


def _superlinks() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "flower-superlink"], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = {**os.environ, **ENV}
    env.setdefault("FLWR_HOME", str(REPO / ".flwr"))
    env.setdefault("FEDXREC_RUNS_DIR", str(REPO / "runs"))  # the app processes may run elsewhere
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    before = _superlinks()
    cmd = [
        "flwr",
        "run",
        str(REPO),
        "--stream",
        "--federation-config",
        f"num-supernodes={NUM_SUPERNODES} client-resources-num-cpus=1",
        *args,
    ]
    try:
        return subprocess.run(cmd, env=env, cwd=REPO, check=False).returncode
    finally:
        for pid in _superlinks() - before:  # only the SuperLink this run started
            os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    raise SystemExit(main())
