"""The legacy message format, spoken by Flower's SecAgg+ workflow (``fitins.*``/``fitres.*`` records).

SecAgg+ exists only as a legacy server workflow plus a client mod; the handlers in
:mod:`client.app` accept both formats, and :func:`secagg_when_asked` applies the SecAgg+ mod only to
messages that carry its stage configuration (so one ClientApp serves both kinds of run).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.compat.common.typing import Code, EvaluateRes, FitRes, Status


def is_legacy(msg: Message) -> bool:
    return any(k.startswith(("fitins.", "evaluateins.")) for k in msg.content.keys())


def legacy_inputs(msg: Message, names: list[str], *, train: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Named global arrays (in the shared-parameter order) and the config of a legacy instruction."""
    ins = (
        compat.recorddict_to_fitins(msg.content, keep_input=True)
        if train
        else compat.recorddict_to_evaluateins(msg.content, keep_input=True)
    )
    arrays = parameters_to_ndarrays(ins.parameters)
    if len(arrays) != len(names):
        raise ValueError(f"global model: {len(arrays)} arrays, expected {len(names)}")
    return dict(zip(names, arrays, strict=True)), dict(ins.config)


def fit_reply(msg: Message, upload: dict[str, np.ndarray], num_examples: int, metrics: dict[str, Any]) -> Message:
    res = FitRes(
        status=Status(code=Code.OK, message=""),
        # float32: SecAgg+ quantises to integers up to 2**22, beyond float16
        parameters=ndarrays_to_parameters([np.atleast_1d(a).astype(np.float32) for a in upload.values()]),
        num_examples=num_examples,
        metrics=metrics,
    )
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def evaluate_reply(msg: Message, num_examples: int, metrics: dict[str, Any]) -> Message:
    res = EvaluateRes(status=Status(code=Code.OK, message=""), loss=0.0, num_examples=num_examples, metrics=metrics)
    return Message(compat.evaluateres_to_recorddict(res), reply_to=msg)


def secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: the SecAgg+ protocol for messages of a SecAgg+ round, a pass-through otherwise."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)
