"""Named federated presets: run-config overrides over ``[tool.flwr.app.config]``."""

from __future__ import annotations

from typing import Any

#: the keys the benchmark writes under ``runs.`` in results/summary.json
SUMMARY_KEYS = ["fed", "fed-dp-eps8", "fed-dp-eps4", "fed-dp-eps1", "fed-userdp"]

#: DP presets: dropout off (DP noise regularises already; dropout over (B, C, 384) inputs costs ~20% of a step);
#: nodes are sampled as in ``fed`` (each node's ε is planned for its expected participation).
#: Local SGD with a small step: under DP-SGD with ~80k shared parameters a node's noise is far larger
#: than its clipped signal, and local Adam (which normalises every coordinate) turned that noise into
#: a random walk that erased the content structure of round 0 (HR@10 0.34 -> 0.16 in 20 rounds). The
#: personal vector is trained only on its own node, so it gets a 10x step. 100 rounds (evaluated
#: every 10): fewer planned steps per node, so less noise per step.
_DP: dict[str, Any] = {
    "dp.enabled": True,
    "dp.max-grad-norm": 1.0,
    "dp.delta": 0.001,
    "model.dropout": 0.0,
    "local.optimizer": "sgd",
    "local.lr": 0.02,
    "local.personal-lr-scale": 10.0,
    "num-server-rounds": 100,
    "fed.eval-every": 10,
}

PRESETS: dict[str, dict[str, Any]] = {
    # non-private, history user mode (the pyproject defaults: 5% of the nodes per round, FedAvgM)
    "fed": {},
    # record-level DP-SGD (privacy unit: one interaction), ε for the whole run
    "fed-dp-eps8": {**_DP, "dp.target-epsilon": 8.0},
    "fed-dp-eps4": {**_DP, "dp.target-epsilon": 4.0},
    "fed-dp-eps1": {**_DP, "dp.target-epsilon": 1.0},
    # user-level DP: server-side fixed clipping of each node's update + Gaussian noise, sampled nodes.
    # The noise on the mean shrinks with the cohort, so half the nodes per round (not 5%), plain FedAvg
    # (the DP wrappers add noise after the inner step) and so fewer rounds for the same ε
    "fed-userdp": {
        "fed.user-dp": "fixed",
        "fed.user-dp-noise": 1.0,
        "fed.user-dp-clip": 0.5,
        "fed.fraction-train": 0.5,
        "fed.strategy": "fedavg",
        "num-server-rounds": 12,
        "fed.eval-every": 2,
    },
    # item cold start: 20% of items never trained on; test items are cold (ranked by the text tower)
    "fed-cold": {"data.cold-fraction": 0.2},
}
