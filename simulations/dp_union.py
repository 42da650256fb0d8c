"""In-process federated DP rounds computed over the union of the cohort's Poisson batches.

With one DP step per device per round (``dp.local-steps = 1``, local SGD), both DP routes reduce to
sums over the cohort, so a round for all 943 devices costs one batched pass here instead of 943 Flower
messages. The arithmetic is the devices' own (:mod:`client.train`: per-sample gradients through the
same model and batch path, clipping by group with :func:`client.train._clipped_sum`, noise from OS
entropy) and the server's (uniform FedAvgM over the replies):

* ``local``: every device adds N(0, (σC)²) to its clipped sum and takes the step lr·(sum + noise)/B;
  the server averages the m uploads: the union's clipped sum plus N(0, m(σC)²), over m·B.
* ``distributed``: every device adds N(0, (σC)²/min-shares) and only the secure sum is seen (SecAgg+,
  computed here without the cryptography: the sum is the same): the union's clipped sum plus
  N(0, m(σC)²/min-shares), over m·B.

Each device's own coordinates (its personal vector) get N(0, (σC)²) from that device alone, in both.
Float16 uploads and SecAgg+ quantisation are left out (both below 1e-3 of a coordinate here).
This is the experimenter's simulation: central evaluation on every user, outside the protocol.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule

from client.privacy import secure_seed
from client.train import _clipped_sum, _groups, dp_samples
from server.evaluation import central_p1
from shared.config import TrainConfig
from shared.model import PERSONAL_PREFIXES, Recommender
from shared.privacy import PrivacyConfig, epsilon_of, plan_noise
from shared.splits import Split

log = logging.getLogger(__name__)


@dataclass
class UnionRun:
    """One simulated DP federation (public settings only)."""

    pcfg: PrivacyConfig
    tcfg: TrainConfig
    rounds: int
    lr: float
    personal_lr_scale: float = 1.0
    momentum: float = 0.9
    fraction: float = 1.0
    eval_every: int = 10
    chunk: int = 512
    #: experimenter randomness (cohorts, negatives); the DP noise and sampling use OS entropy
    seed: int = 0
    log_rows: list[dict[str, Any]] = field(default_factory=list)


def run_union(model: Recommender, split: Split, run: UnionRun) -> list[dict[str, Any]]:
    """Train ``model`` (its personal table has one row per user = device) and evaluate; returns rows.

    ``model`` ends with the parameters of its best validation round (experimenter selection).
    """
    pcfg = run.pcfg
    if pcfg.local_steps not in (0, 1) or (pcfg.mode == "local" and pcfg.steps_per_round() != 1):
        raise ValueError("the union simulation needs one DP step per device per round (dp.local-steps = 1)")
    exp_rng = np.random.default_rng(run.seed)
    gen = torch.Generator().manual_seed(secure_seed())
    sigma = plan_noise(pcfg, num_rounds=run.rounds, fraction=run.fraction)
    std = sigma * pcfg.total_clip()
    samples = dp_samples(split, pcfg, one_device_per_user=True)
    owners = samples.owners()
    num_users = split.num_users
    model.scale.requires_grad_(False)
    groups = _groups(model, pcfg)
    names = {id(p): n for n, p in model.named_parameters()}
    velocity = {id(p): torch.zeros_like(p) for ps in groups.values() for p in ps}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    participation = np.zeros(num_users, np.int64)
    rows = [_evaluate(model, split, 0, sigma, participation, pcfg)]
    t0 = time.time()
    best_val, best_state = -1.0, None
    share_copies = 1.0 if pcfg.mode == "local" else 1.0 / pcfg.min_shares
    for rnd in range(1, run.rounds + 1):
        m = max(1, int(num_users * run.fraction))
        cohort = np.sort(exp_rng.choice(num_users, size=m, replace=False))
        # a device whose next round would pass the target refuses (check_budget); it is not in the sum
        nxt = np.array(
            [
                epsilon_of([(sigma, pcfg.sample_rate, int(k) + 1, pcfg.group())], pcfg.delta)
                for k in participation[cohort]
            ]
        )
        cohort = cohort[nxt <= pcfg.target_epsilon * (1 + 1e-9)] if pcfg.target_epsilon > 0 else cohort
        if len(cohort) == 0 or (pcfg.mode == "distributed" and len(cohort) < pcfg.min_shares):
            rows.append({"round": rnd, "skipped": "too few devices"})
            continue
        participation[cohort] += 1
        in_cohort = np.isin(owners, cohort)
        pick = np.flatnonzero(in_cohort & (torch.rand(len(samples), generator=gen).numpy() < pcfg.sample_rate))
        sums = {id(p): torch.zeros_like(p) for ps in groups.values() for p in ps}
        gsm.train()
        for s in range(0, len(pick), run.chunk):
            idx = pick[s : s + run.chunk]
            model.zero_grad(set_to_none=True)
            per = samples.losses(model, gsm, idx, tcfg=run.tcfg, num_items=split.num_items, rng=exp_rng)
            per.sum().backward()
            _clipped_sum(groups, pcfg.clip_norms())
            for ps in groups.values():
                for p in ps:
                    assert p.grad is not None
                    sums[id(p)] += p.grad
                    p.grad_sample = None  # type: ignore[attr-defined]
        with torch.no_grad():
            mask = torch.zeros(num_users, 1)
            mask[torch.as_tensor(cohort)] = 1.0
            for ps in groups.values():
                for p in ps:
                    g = sums[id(p)]
                    if names[id(p)].startswith(PERSONAL_PREFIXES):  # each device's own row: its own noise
                        g = g + torch.normal(0.0, std, size=p.shape, generator=gen) * mask
                        p.sub_(run.lr * run.personal_lr_scale * g / pcfg.expected_batch)
                        continue
                    g = g + torch.normal(0.0, std * math.sqrt(len(cohort) * share_copies), size=p.shape, generator=gen)
                    v = velocity[id(p)]
                    v.mul_(run.momentum).add_(g / (len(cohort) * pcfg.expected_batch))
                    p.sub_(run.lr * v)
        if rnd % run.eval_every == 0 or rnd == run.rounds:
            row = _evaluate(model, split, rnd, sigma, participation, pcfg)
            row["seconds"] = time.time() - t0
            rows.append(row)
            if row["val-hr@10"] + row["val-ndcg@10"] > best_val:  # the best validation round's model is kept
                best_val = row["val-hr@10"] + row["val-ndcg@10"]
                best_state = {k: v.clone() for k, v in model.public_state().items()}
            log.info("round %d: %s", rnd, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
    gsm._close()
    if best_state is not None:
        model.load_partial(best_state)
    return rows


def _evaluate(
    model: Recommender, split: Split, rnd: int, sigma: float, participation: np.ndarray, pcfg: PrivacyConfig
) -> dict[str, Any]:
    row: dict[str, Any] = {"round": rnd, **central_p1(model, split, "val"), **central_p1(model, split, "test")}
    steps = int(participation.max())
    row["epsilon"] = epsilon_of([(sigma, pcfg.sample_rate, steps, pcfg.group())], pcfg.delta) if steps else 0.0
    row["noise-multiplier"] = sigma
    row["eval"] = "experimenter"
    return row
