"""Service settings, read once from the environment (prefix `SGFT_`) or a `.env` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "change-me-development-only"


class Settings(BaseSettings):
    """Every knob of the service. Unset URLs derive from `data_dir` (the embedded default)."""

    model_config = SettingsConfigDict(env_prefix="SGFT_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = "development"
    data_dir: Path = Field(
        default=Path("./var"), description="Database, broker, artifacts and scratch space."
    )
    database_url: str = Field(default="", description="SQLAlchemy URL; default sqlite:///$DATA_DIR/sgft.db.")
    broker_url: str = Field(
        default="", description="Celery broker; default sqla+sqlite:///$DATA_DIR/broker.db."
    )
    artifacts_url: str = Field(
        default="", description="fsspec URL of artifacts; default $DATA_DIR/artifacts."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    heartbeat_timeout: float = Field(
        default=120.0, gt=0, description="A running job silent this long is stale."
    )
    max_attempts: int = Field(default=3, ge=1, description="Worker losses tolerated before a job fails.")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_line_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Longest JSONL line of an upload (refused while streaming)."
    )
    secret_key: str = Field(default=DEFAULT_SECRET, description="HMAC pepper for API keys.")
    worker_queues: str = Field(
        default="cpu", description="Comma list of queues a worker consumes (cpu, gpu)."
    )
    job_queue: Literal["cpu", "gpu"] = Field(default="cpu", description="Queue new jobs are sent to.")
    queue_prefix: str = Field(
        default="", description="Prefix of queue names (isolates deployments on one broker)."
    )
    max_devices: int = Field(
        default=1,
        ge=1,
        description="API: the most devices a job may ask for (the largest SGFT_WORKER_DEVICES deployed); "
        "above it a create is a 400.",
    )
    worker_devices: int = Field(
        default=1,
        ge=1,
        description="Worker: the devices (GPUs, or CPU processes with gloo) it runs one job on; it consumes "
        "the queues of jobs asking for 2..N of them.",
    )
    sharding: Literal["none", "fsdp"] = Field(
        default="none",
        description="Worker: how a multi-device job holds its model: none (DDP, a whole copy per device) or "
        "fsdp (FSDP2 shards the frozen weights, and every weight of full fine-tuning; no checkpoints).",
    )
    checkpoint_every: int = Field(default=50, ge=1, description="Default checkpoint period in steps.")
    reaper_interval: float = Field(default=15.0, gt=0)
    queued_grace: float = Field(
        default=120.0, gt=0, description="Re-send a queued job unclaimed for this long."
    )
    job_rate_limit: int = Field(
        default=30, ge=1, description="Job creations per API key per minute (estimates: four times as many)."
    )
    visibility_timeout: int = Field(
        default=7 * 24 * 3600, description="Broker redelivery timeout; above any job."
    )
    precision: Literal["auto", "fp32", "bf16", "bf16-weights"] = Field(
        default="auto",
        description="Training precision: bf16 autocast (bf16), also bf16 frozen weights (bf16-weights), "
        "fp32; auto = bf16 on CUDA, fp32 on CPU.",
    )
    device_memory: int | None = Field(
        default=None,
        gt=0,
        description="Bytes of device memory SparseGrad's auto choices must fit; default: the device's own.",
    )
    models_dir: Path | None = Field(
        default=None, description="Extra model registry; default $DATA_DIR/models."
    )
    infer_url: str = Field(
        default="",
        description="The inference server (`sgft infer`) the API proxies to; default from infer_port.",
    )
    infer_host: str = Field(default="127.0.0.1", description="Address `sgft infer` listens on.")
    infer_port: int = Field(default=8001, description="Port `sgft infer` listens on.")
    infer_memory: int = Field(
        default=4 << 30, gt=0, description="Bytes of loaded models (bases, fine-tunes) `sgft infer` keeps."
    )
    infer_timeout: float = Field(
        default=120.0, gt=0, description="Seconds a request may wait for and use the inference server."
    )
    infer_max_tokens: int = Field(default=1024, ge=1, description="Most tokens one completion may ask for.")

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'sgft.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if not self.artifacts_url:
            self.artifacts_url = str(self.data_dir / "artifacts")
        if not self.infer_url:
            self.infer_url = f"http://127.0.0.1:{self.infer_port}"
        if self.models_dir is None:
            self.models_dir = self.data_dir / "models"
        if self.env == "production" and (self.secret_key == DEFAULT_SECRET or len(self.secret_key) < 16):
            raise ValueError("SGFT_SECRET_KEY must be set to a secret of 16+ characters in production")
        return self

    @property
    def queues(self) -> list[str]:
        """Full names of the queues this process consumes: each kind's, and for a worker of N devices the
        queues of jobs asking for 2..N (how a worker advertises its capacity: it only takes what fits)."""
        return self.worker_queue_names(self.worker_queues)

    def worker_queue_names(self, kinds: str) -> list[str]:
        """The queues a worker consuming `kinds` (comma list of cpu, gpu) with `worker_devices` takes."""
        out = []
        for kind in (k.strip() for k in kinds.split(",") if k.strip()):
            out += [self.queue_name(device_queue(kind, n)) for n in range(1, self.worker_devices + 1)]
        return out

    def queue_name(self, kind: str) -> str:
        """The broker queue for `kind` ("cpu" or "gpu")."""
        return f"{self.queue_prefix}{kind}"

    @property
    def models_path(self) -> Path:
        """The extra registry folder (always set after validation)."""
        return self.models_dir or self.data_dir / "models"


def device_queue(kind: str, devices: int) -> str:
    """The queue (before the prefix) of a job of `devices` on `kind`: "cpu", "cpu-x2", "gpu-x8"…."""
    return kind if devices <= 1 else f"{kind}-x{devices}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests call `get_settings.cache_clear()` after changing the env)."""
    return Settings()
