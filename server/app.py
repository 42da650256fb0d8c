"""The fedxrec ServerApp: one ``main`` that parses the run config and runs the round loop."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.config import parse_server_config
from server.loop import run_federated

app = ServerApp()
# importing opacus runs logging.basicConfig (opacus/utils/module_utils.py): a root handler that printed
# every record of Flower's logger, which has its own console handler, a second time (DEBUG included)
logging.getLogger("flwr").propagate = False


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Federated training of the shared parameters.

    FedAvg / FedAvgM / FedAdam / FedProx with optional user-level DP; under ``fed.secagg`` SecAgg+
    (:mod:`server.secagg`), where ``dp.mode = distributed`` takes one DP-SGD step per round on the
    secure sum of the nodes' noise shares.
    """
    rc = parse_server_config(context.run_config)
    if rc.fed.secagg:
        from server.secagg import run_secagg

        run_secagg(grid, context, rc)
    else:
        run_federated(grid, rc)
