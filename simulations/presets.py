"""Named federated presets: run-config overrides over ``[tool.flwr.app.config]``."""

from __future__ import annotations

from typing import Any

#: the keys ``bench_fed`` (Flower simulations) writes under ``runs.`` in results/summary.json
SUMMARY_KEYS = ["fed", "fed-userdp"]
#: the keys ``bench_dp`` (in-process union simulation of record-level DP) writes under ``runs.``
DP_SUMMARY_KEYS = ["fed-dp-eps8", "fed-dp-eps4", "fed-dp-eps1", "fed-sdp-eps8", "fed-sdp-eps1"]

#: Record-level DP recipe (both routes). Every device takes one DP-SGD step per round (public Poisson
#: rate, public normaliser), uploads only the noised parameters, and every device takes part in every
#: round. The item tower starts from the public catalogue (PCA of the text features); a per-item bias
#: carries popularity (DESIGN 3 allows it under DP: the noise covers every row). Local SGD: under
#: DP-SGD an adaptive local optimiser turns the noise into a random walk.
_DP: dict[str, Any] = {
    "dp.enabled": True,
    "dp.item-bias": True,
    "dp.train-tower": False,
    "local.optimizer": "sgd",
    "local.lr": 0.3,
    "dp.local-steps": 1,
    "dp.sample-rate": 0.05,
    "dp.expected-batch": 5.0,
    "dp.max-grad-norm": 1.0,
    "dp.delta": 1e-5,
    "fed.strategy": "fedavgm",
    "fed.server-momentum": 0.9,
    "fed.fraction-train": 1.0,
    "num-server-rounds": 40,
    "fed.eval-every": 5,
}
#: the non-private recipe (history user mode; 5% of the nodes per round, FedAvgM with local Adam).
#: Local lr 0.003, chosen on validation HR@10 at round 60 of an in-process replica of this run on
#: both datasets (ml-100k 0.694 against 0.663 at 0.01; ml-latest-small 0.603 against 0.451; 0.001
#: and 0.03 lower on ml-100k; 5 local epochs, FedAdam and a larger server lr did not help).
#: The presets measured on it keep it (fed-userdp, fed-k1, fed-k1-base)
_PLAIN_V1: dict[str, Any] = {
    "dp.enabled": False,
    "local.optimizer": "adam",
    "local.lr": 0.003,
    "fed.fraction-train": 0.05,
    "num-server-rounds": 200,
    "fed.eval-every": 20,
}
#: ``fed``: a cosine decay of the local lr (to 0.1x) and at most 8 local steps a round (a heavy node
#: trains on 256 of its samples, weighted as 256), chosen on round-200 central validation HR@10 of the
#: replica (python -m simulations.tune_fed): ml-latest-small 0.672 -> 0.713 (cosine) -> 0.752 (+ 8 steps;
#: 4 steps 0.702 at round 100 against 0.705); ml-100k 0.725 -> 0.731 (cosine). A 10x or 30x personal lr
#: did not help. And 10% of the nodes a round instead of 5% (round-200 replica validation HR@10,
#: with the cap and decay: ml-latest-small 0.777 against 0.752, ml-100k 0.749 against 0.731 without the
#: cap; the same node-visits as 400 rounds at 5%, which reached 0.764 and 0.748; batch 64 under the
#: cap: 0.733 on ml-latest-small)
_PLAIN: dict[str, Any] = {**_PLAIN_V1, "local.max-steps": 8, "fed.lr-decay": "cosine", "fed.fraction-train": 0.1}
#: DP-SGD across the federation over SecAgg+: each device adds 1/min-shares of one step's noise, and
#: the cohort's secure sum is one central DP-SGD step over ~3,000 sessions, so the noise per example is
#: ~30x smaller than on one device and the item tower itself can be trained: each item of a session is
#: predicted from the session's other items (co-occurrence within 60 s buckets, a group-of-two unit in
#: the accountant). Ranking reads the latest 10 history items (chosen on validation: 0.61 vs 0.57 at 50)
_SDP: dict[str, Any] = {
    **_DP,
    "dp.mode": "distributed",
    "fed.secagg": True,
    "dp.min-shares": 900,
    "fed.min-nodes": 900,
    "dp.sample": "session",
    "dp.sample-rate": 0.1,
    "dp.expected-batch": 3.3,
    "dp.train-tower": True,
    "local.lr": 1.0,
    "num-server-rounds": 100,
    "fed.eval-every": 10,
    "model.history-len": 10,
}

PRESETS: dict[str, dict[str, Any]] = {
    # non-private, history user mode (10% of the nodes per round, FedAvgM with local Adam)
    "fed": _PLAIN,
    # record-level DP-SGD on each device (privacy unit: one interaction), ε for the whole run; no trust
    "fed-dp-eps8": {**_DP, "dp.target-epsilon": 8.0},
    "fed-dp-eps4": {**_DP, "dp.target-epsilon": 4.0},
    # at ε = 1 the 40-round recipe's noise random-walks the bias: 20 rounds at half the step, chosen on
    # validation (central val HR@10 0.400 against 0.391)
    "fed-dp-eps1": {**_DP, "dp.target-epsilon": 1.0, "num-server-rounds": 20, "local.lr": 0.15, "fed.eval-every": 2},
    # record-level DP-SGD over the secure sum (trust: SecAgg+ and honest noise shares)
    "fed-sdp-eps8": {**_SDP, "dp.target-epsilon": 8.0},
    "fed-sdp-eps1": {**_SDP, "dp.target-epsilon": 1.0},
    # user-level DP: server-side fixed clipping of each node's update + Gaussian noise, sampled nodes.
    # Accounted without amplification (Flower samples a fixed-size cohort) over each node's participations
    "fed-userdp": {
        **_PLAIN_V1,  # the recipe its figures were measured at (before the step cap and lr decay)
        "local.lr": 0.01,  # the lr its figures were measured at (before _PLAIN's moved to 0.003)
        "fed.user-dp": "fixed",
        "fed.user-dp-noise": 1.0,
        "fed.user-dp-clip": 0.5,
        "fed.fraction-train": 0.5,
        "fed.strategy": "fedavg",
        "num-server-rounds": 12,
        "fed.eval-every": 2,
    },
    # k = 1: each device fine-tunes LoRA (peft, on query/key/value/dense) in MiniLM's top BertLayer
    # over the cached lower layers, plus the head; the LoRA weights and the head are the shared part.
    # What makes it fit an hour here (a fed client's step, 1 thread: 1.83 s at 128 tokens -> 0.41 s):
    # the first 32 cached tokens reach the top layer (model.top-tokens; each has seen the whole text
    # through the frozen lower layers), the top layer's own dropout is off (model.top-dropout), and
    # 2.5% of the nodes train per round (24 on ml-100k; 47 cost 129 s a round here)
    "fed-k1": {
        **_PLAIN_V1,  # the recipe its figures were measured at (before the step cap and lr decay)
        "model.top-layers": 1,
        "model.adapter": "lora",
        "model.top-tokens": 32,
        "model.top-dropout": False,
        "fed.fraction-train": 0.025,
        "num-server-rounds": 40,
        "fed.eval-every": 20,
    },
    # fed-k1's federation at k = 0 (the same rounds, cohort and evaluation): what the top layer adds
    "fed-k1-base": {**_PLAIN_V1, "fed.fraction-train": 0.025, "num-server-rounds": 40, "fed.eval-every": 20},
    # item cold start: 20% of items never trained on; test items are cold (ranked by the text tower)
    "fed-cold": {**_PLAIN, "data.cold-fraction": 0.2},
}

#: the privacy–utility curve: each route's ε = 8 preset at every ε (0: the same recipe without noise, "ε = ∞")
#: (the distributed route is measured at its two presets, ε = 1 and 8: its runs cost ~6 min each here)
CURVE_BASES = {"local": "fed-dp-eps8"}
CURVE_EPSILONS = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 0.0]

#: the recipe's steps, one at a time (bench_dp --ablation), all at ε = 8
#: (a string entry names a preset whose figures are reused from ``runs.<preset>``: the same run)
ABLATION: dict[str, dict[str, Any] | str] = {
    "local: tower + personal vector (the old recipe's DP part)": {
        **_DP,
        "dp.target-epsilon": 8.0,
        "dp.item-bias": False,
        "dp.train-tower": True,
        "dp.train-personal": True,
    },
    "local: + item bias": {**_DP, "dp.target-epsilon": 8.0, "dp.train-tower": True, "dp.train-personal": True},
    "local: item bias only, tower frozen at its public start (fed-dp-eps8)": "fed-dp-eps8",
    "distributed: item bias only, interaction samples": {
        **_SDP,
        "dp.target-epsilon": 8.0,
        "dp.sample": "interaction",
        "dp.sample-rate": 0.05,
        "dp.expected-batch": 5.0,
        "dp.train-tower": False,
        "local.lr": 0.3,
        "num-server-rounds": 40,
        "model.history-len": 50,
    },
    "distributed: + tower trained on sessions": {**_SDP, "dp.target-epsilon": 8.0, "model.history-len": 50},
    "distributed: + ranking on the latest 10 items (fed-sdp-eps8)": "fed-sdp-eps8",
}
