"""The README's main job: ``flwr run .`` on the local simulation (ml-100k, one user per node).

Runs ``flwr run . --stream`` with 943 simulated SuperNodes (one CPU each), streams its per-round
progress lines and final summary table, then stops the local SuperLink that ``flwr run`` started
(it would outlive the command) by its PID. Extra arguments go to ``flwr run`` (e.g.
``-c "num-server-rounds=5"``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from simulations.runner import ENV, REPO

NUM_SUPERNODES = 943


def _superlinks() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "flower-superlink"], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


def main(argv: list[str] | None = None, *, num_supernodes: int = NUM_SUPERNODES) -> int:
    """``flwr run`` with ``argv`` as extra arguments and ``num_supernodes`` simulated nodes."""
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
        f"num-supernodes={num_supernodes} client-resources-num-cpus=1",
        *args,
    ]
    try:
        code = subprocess.run(cmd, env=env, cwd=REPO, check=False).returncode
    finally:
        for pid in _superlinks() - before:  # only the SuperLink this run started
            os.kill(pid, signal.SIGTERM)
    if code == 0:
        print(privacy_summary(Path(env["FEDXREC_RUNS_DIR"]) / _run_name(args) / "summary.json"))
    return code


def _run_name(args: list[str]) -> str:
    """``fed.run-name`` from ``-c`` overrides (the pyproject default is ``fed``)."""
    m = re.search(r"fed\.run-name\s*=\s*['\"]?([^'\" ]+)", " ".join(args))
    return m.group(1) if m else "fed"


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
