"""The main job's final privacy lines (ε, δ, unit, trust, non-private reference)."""

from __future__ import annotations

import json
from pathlib import Path

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
