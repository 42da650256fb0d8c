"""The checkpoint of a federated run's best validation round: ``<runs>/<run-name>/best`` (what the API serves).

``<runs>/<run-name>/checkpoint`` is the last round's (the loop resumes from it); ``best`` is written
after a round whose validation figures are the best so far by :func:`server.runlog.best_round`, the
rule the run's summary uses (federated evaluation, or the experimenter's central one in a private run).
Its meta holds the round, its validation and test figures, and who chose it. A fresh start of the
run name removes a ``best`` left by an earlier run, so it never outlives its own run's log.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.runlog import SELECTED_BY, best_round
from shared.config import DEFAULT_DATASET, runs_root

if TYPE_CHECKING:
    from shared.model import Recommender

BEST_DIR = "best"
#: the run name of the main job (pyproject ``fed.run-name``; ``make run``)
DEFAULT_RUN_NAME = "fed"


def best_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / BEST_DIR


def run_name_for(dataset: str) -> str:
    """The main job's run name on ``dataset``: ``fed``, or ``fed-<dataset>`` off the default dataset."""
    return DEFAULT_RUN_NAME if dataset == DEFAULT_DATASET else f"{DEFAULT_RUN_NAME}-{dataset}"


def default_checkpoint(dataset: str = DEFAULT_DATASET) -> Path:
    """The main job's best-round checkpoint on ``dataset``: ``<runs>/fed/best`` (another: ``fed-<dataset>/best``).

    ``<runs>`` is ``$FEDXREC_RUNS_DIR``, else ``./runs``.
    """
    return runs_root() / run_name_for(dataset) / BEST_DIR


def clear_best(run_dir: str | Path) -> None:
    """Remove a best-round checkpoint left by an earlier run of this name (call on a fresh start)."""
    shutil.rmtree(best_dir(run_dir), ignore_errors=True)


def save_if_best(
    model: Recommender,
    item_ids: list[int],
    run_dir: str | Path,
    rows: list[dict[str, Any]],
    *,
    source: str,
    meta: dict[str, Any],
) -> bool:
    """Save ``model`` to ``<run_dir>/best`` if the last row is the best round of ``rows``; returns whether it was."""
    best = best_round(rows, source=source)
    if best is None or not rows or best["round"] != rows[-1]["round"]:
        return False
    from shared.checkpoint import save_checkpoint

    figures = {k: v for k, v in best[source].items() if k.startswith(("val-", "test-"))}
    info = {"round": best["round"], "source": source, "selected-by": SELECTED_BY[source], **figures}
    save_checkpoint(model, item_ids, best_dir(run_dir), meta={**meta, "best": info})
    return True
