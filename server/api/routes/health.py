"""``GET /health``: liveness plus what is being served."""

from __future__ import annotations

import dataclasses
import os
import time

from fastapi import APIRouter

from server.api import schemas
from server.api.deps import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=schemas.Health)
async def health(service: ServiceDep) -> schemas.Health:
    """Liveness, the model configuration and the checkpoint being served."""
    cfg = dataclasses.asdict(service.model.cfg)
    return schemas.Health(
        status="ok",
        worker_pid=os.getpid(),
        uptime_s=round(time.time() - service.started, 3),
        model=schemas.ModelInfo(**{k: cfg[k] for k in schemas.ModelInfo.model_fields}),
        checkpoint=schemas.CheckpointInfo(
            path=str(service.checkpoint_path or ""), id=service.checkpoint_id, meta=dict(service.model.ckpt.meta)
        ),
        items=service.model.num_items,
        cold_items=len(service.cold_ids),
        kg_nodes=service.graph.number_of_nodes(),
        kg_edges=service.n_edges,
    )
