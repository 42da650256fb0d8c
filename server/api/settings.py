"""Service settings, read from the environment (prefix ``FEDXREC_``) through a cached dependency."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.best import default_checkpoint
from shared.config import ENTITY_RERANK


class Settings(BaseSettings):
    """Everything the API needs to start; every field is ``FEDXREC_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="FEDXREC_", extra="ignore")

    dataset: str = "ml-100k"
    checkpoint: Path = Field(
        default_factory=lambda data: default_checkpoint(data["dataset"]),
        description="checkpoint directory to serve (default: the main job's best round on the dataset,"
        " $FEDXREC_RUNS_DIR/fed/best; another dataset: fed-<dataset>/best)",
    )
    data_dir: Path = Field(default=Path("data"), description="data directory holding ml-100k/ and kg/")
    kg_version: str = "dbpedia-live-2024"
    kg_path: Path | None = Field(
        default=None, description="saved KG (kg.save_graph); built from the catalogue if unset"
    )
    state_dir: Path = Field(default=Path("runs/api-state"), description="where registered cold-start items persist")
    token: SecretStr | None = Field(default=None, description="bearer token for writes; unset: writes are refused")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "info"
    log_requests: bool = True
    max_history: int = Field(
        default=5000, ge=1, description="longest history a request may carry (the model reads its latest history-len)"
    )
    explain_window: int = Field(
        default=500, ge=1, description="latest history items that explanation paths may start from"
    )
    max_k: int = Field(default=100, ge=1, description="largest k of /v1/recommend")
    max_score_items: int = Field(default=500, ge=1, description="most candidates /v1/score re-ranks in one call")
    max_paths: int = Field(default=3, ge=1, le=20, description="paths per recommended item")
    entity_rerank: float = Field(
        default=ENTITY_RERANK,
        ge=0.0,
        le=1.0,
        description="weight of the re-ranking of the top rerank-pool toward items explained through a person or"
        " a company (0: the model's order; chosen and costed in docs/api.md)",
    )
    rerank_pool: int = Field(default=50, ge=1, le=1000, description="candidates the entity re-ranking reorders")
    prior_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="share of the KG prior in a cold item's vector"
    )


@lru_cache
def get_settings() -> Settings:
    """The process's settings (cached; override this dependency in tests)."""
    return Settings()
