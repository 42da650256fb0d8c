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
from flwr.compat.common.typing import Code, FitRes, Status


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


#: the weight of every legacy fit reply: uniform weights (a node's example count is private data); the
#: server's SecAgg+ workflow sets ``max_weight`` to it (:data:`server.secagg.SECAGG_WEIGHT`)
FIT_WEIGHT = 1


def fit_reply(msg: Message, upload: dict[str, np.ndarray], num_examples: int, metrics: dict[str, Any]) -> Message:
    """The legacy (SecAgg+) reply to a fit instruction: the upload, weight 1, and no metrics.

    Under SecAgg+ only the masked vector is hidden: Flower's ``secaggplus_mod`` reads ``num_examples``
    and the parameters from this reply, replaces the parameters by the masked vector, and sends the
    rest of the reply as it is (``flwr/client/mod/secure_aggregation/secaggplus_mod.py``), and the
    server's workflow hands every ``FitRes`` (``num_examples``, ``metrics``) to the strategy in the clear
    (``flwr/server/workflow/secure_aggregation/secaggplus_workflow.py``). So ``num_examples`` and
    ``metrics`` are accepted for the handlers' sake and **never sent**: the reply carries
    ``num_examples = FIT_WEIGHT`` (1; the secure sum is then the plain mean) and an empty metrics record.
    """
    del num_examples, metrics  # private data: not sent (see above)
    res = FitRes(
        status=Status(code=Code.OK, message=""),
        # float32: SecAgg+ quantises to integers up to 2**22, beyond float16
        parameters=ndarrays_to_parameters([np.atleast_1d(a).astype(np.float32) for a in upload.values()]),
        num_examples=FIT_WEIGHT,
        metrics={},
    )
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


class LegacyEvaluationRefused(PermissionError):
    """A legacy (SecAgg+) evaluation reply was asked for: per-node hit counts would travel unmasked."""


def evaluate_reply(msg: Message, num_examples: int, metrics: dict[str, Any]) -> Message:
    """Refuse: a legacy evaluation reply would carry this node's hits and counts in the clear.

    The legacy format is spoken only by fedxrec's SecAgg+ runs, whose server sends no federated
    evaluation (:func:`server.secagg.legacy_strategy`, ``fraction_evaluate = 0``); an evaluation
    instruction in that format is answered with this error (Flower returns it to the server as the
    node's error reply) and nothing of ``num_examples`` or ``metrics`` leaves the node.

    Raises
    ------
    LegacyEvaluationRefused
        Always.
    """
    del num_examples, metrics
    raise LegacyEvaluationRefused(
        f"message {msg.metadata.message_id}: a SecAgg+ run does no federated evaluation "
        "(the per-node hits would travel in the clear); refused"
    )


def secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: the SecAgg+ protocol for messages of a SecAgg+ round, a pass-through otherwise."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)
