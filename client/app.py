"""The fedxrec ClientApp: local DP training and on-device evaluation (Flower Message API).

The handlers are thin and import the training stack (torch, opacus, the model) on first use: a
deployed SuperNode may start a fresh ClientApp process per message, and the SecAgg+ key-exchange
messages need none of it.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.legacy import secagg_when_asked

app = ClientApp(mods=[secagg_when_asked])
# importing opacus runs logging.basicConfig (opacus/utils/module_utils.py): a root handler that printed
# every record of Flower's logger, which has its own console handler, a second time (DEBUG included)
logging.getLogger("flwr").propagate = False


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on this node's interactions; reply with the shared parameters only."""
    from client import handlers

    return handlers.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Rank this node's own validation and test items; reply with HR/NDCG sums and counts only."""
    from client import handlers

    return handlers.evaluate(msg, context)
