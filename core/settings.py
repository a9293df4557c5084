"""The one settings class of the service (environment variables with prefix LBDN_).

Development (the default) runs with zero set-up: SQLite job store and an embedded SQLite broker under
LBDN_HOME. Production refuses those embedded defaults: it must be told where its database and broker
are, so a mis-configured deployment fails at start-up instead of silently using local files.

Values come from the process environment, then from a `.env` file in the working directory
(`LBDN_...=value` lines; the environment wins). Each process reads them once at start (`lbdn`
calls `get_settings()`) and passes the Settings object down: to `api.main.create_app`, to the
worker's Celery app (worker.app.WorkerApp) and from it to every task. Nothing else reads LBDN_
variables for the service (lipcore's command line keeps its own LBDN_DATA_DIR default; the service
passes `datasets_dir` to lipcore explicitly).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from core.artifacts import ArtifactStore


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LBDN_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    env: Literal["development", "production"] = "development"
    home: Path = Field(Path("./var"), description="artifacts (one folder per job) and embedded databases")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/lbdn.sqlite")
    broker_url: str | None = Field(
        None, description="Celery broker; default the embedded sqla+sqlite:///<home>/broker.sqlite"
    )
    data_dir: Path | None = Field(None, description="datasets (lipcore's LBDN_DATA_DIR); default ./data")
    # artifact store (issue 19): where jobs' files live; see core.artifacts and README "Running it elsewhere"
    artifacts: str | None = Field(
        None,
        pattern=r"^(s3://[^/\s]+(/\S*)?|file://\S+|[^:\s]\S*)$",
        description="s3://bucket/prefix: jobs' files in S3-compatible storage, shared by hosts; unset: "
        "LBDN_HOME/jobs on this host (or a folder given here)",
    )
    s3_endpoint: str | None = Field(None, description="S3 endpoint URL (MinIO, moto, ...); unset: AWS")
    s3_region: str | None = Field(None, description="S3 region; unset: AWS_REGION or us-east-1")
    s3_access_key_id: str | None = Field(None, description="S3 access key; unset: AWS_ACCESS_KEY_ID")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret; unset: AWS_SECRET_ACCESS_KEY")
    artifact_cache_mb: int = Field(
        2048, ge=1, description="S3 only: this host's cache of downloaded models (certify, export, evaluate), MiB"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # Requests
    max_upload_bytes: int = Field(16 * 2**20, ge=1024, description="largest request body (bytes)")
    max_certify_inputs: int = Field(256, ge=1, description="inputs per certify request")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="decompression-bomb limit per image")
    model_cache_size: int = Field(4, ge=1, description="trained models kept loaded for certify (LRU)")
    certify_attack_steps: int = Field(100, ge=1, description="steps of the ?attack=true search")
    api_threads: int = Field(
        32, ge=4, description="threads of the API's sync routes; its DB pool is sized from this (api.main)"
    )
    certify_concurrency: int = Field(
        2, ge=1, description="certify processes (requests computed at once; the rest wait without a thread)"
    )
    certify_nice: int = Field(
        10, ge=0, le=19, description="niceness of the certify processes: polls and /healthz are served first"
    )
    # certify batching (issue 20)
    certify_batch_max_requests: int = Field(
        32, ge=1, description="certify requests of one model and tenant sent to a certify process as one batch"
    )
    certify_batch_max_inputs: int = Field(
        256, ge=1, description="inputs per forward in a certify process (a larger batch takes several forwards)"
    )
    certify_batch_wait_ms: float = Field(
        20.0, ge=0, le=1000, description="how long a free certify process waits at most for a batch to fill (ms)"
    )
    certify_slots_per_tenant: int = Field(
        32, ge=1, description="certify requests of one tenant read, queued or computed at once (429 above)"
    )
    certify_slots_total: int = Field(96, ge=1, description="certify requests read, queued or computed at once (429)")
    certify_json_max_depth: int = Field(
        8, ge=3, le=64, description="nesting depth of a JSON certify body (objects and arrays; 422 above)"
    )
    access_log: bool = Field(
        False,
        description="uvicorn's line per request (about a tenth of a poll's API CPU; per-route counts and "
        "latencies are in /metrics either way)",
    )

    # Access and limits (see README "API keys, access and limits")
    auth: Literal["keys", "none"] | None = Field(
        None,
        description="keys: every /v1 request needs a key; none: open (loopback only). Unset: keys beyond "
        "loopback; on loopback open until the first key is created, keys from then on",
    )
    metrics_token: str | None = Field(
        None, min_length=16, description="bearer token of /metrics and /readyz; unset: loopback clients only"
    )
    key_cache_s: float = Field(
        1.0, ge=0, description="seconds an API key's tenant is remembered (a revoked key works this much longer)"
    )
    max_active_jobs_per_tenant: int = Field(20, ge=1, description="queued + running jobs of one tenant (429 above)")
    max_job_memory_gb: float = Field(
        80.0, gt=0, description="worker memory a job may need by lipcore.cost's estimate (422 above), GiB"
    )
    certify_attacks_per_tenant: int = Field(1, ge=1, description="concurrent ?attack=true requests of one tenant")
    certify_attacks_total: int = Field(2, ge=1, description="concurrent ?attack=true requests in all")
    certify_attack_timeout_s: float = Field(
        30.0, gt=0, description="time budget of one ?attack=true search; cut short after it"
    )
    # imports (issue 22)
    imports_per_minute: int = Field(
        12, ge=1, description="POST /v1/models/import of one tenant per minute (429 with Retry-After above)"
    )
    max_import_bytes_per_tenant: int = Field(
        4 * 2**30, ge=1024, description="bytes of imported models one tenant keeps (429 above; delete to free)"
    )

    # limits (issue 22): see README "API keys, access and limits"
    max_jobs_per_sweep: int = Field(
        500, ge=1, description="training jobs of one sweep, counted before its grid is expanded (422 above)"
    )
    max_streams_per_tenant: int = Field(
        20, ge=1, description="open event streams (/v1/jobs/{id}/events) of one tenant per API process (429 above)"
    )
    auth_failures_per_window: int = Field(
        30, ge=1, description="failed authentications of one client address per window before 429"
    )
    auth_failure_window_s: float = Field(60.0, gt=0, description="the window of auth_failures_per_window, seconds")
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="the service's address as clients see it (e.g. https://lbdn.example.org); URLs in "
        "answers start with it. Unset: URLs are relative (never built from the request's Host)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="time a connection has to send a request's headers (uvicorn closes it after)"
    )
    # replicas and load shedding (issue 19): see README "Concurrency"
    api_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes of `lbdn api` / `lbdn serve` on one port (a supervisor restarts them)",
    )
    max_in_flight: int = Field(
        8,
        ge=1,
        le=1024,
        description="requests an API process serves at once, at most LBDN_API_THREADS (certify, event streams "
        "and probes not counted); the others wait up to LBDN_MAX_QUEUE_MS",
    )
    max_queue_ms: float = Field(
        1000.0,
        ge=1,
        le=60_000,
        description="longest wait of a request for one of the LBDN_MAX_IN_FLIGHT places of its API process (ms); "
        "503 with Retry-After after it",
    )
    limit_concurrency: int | None = Field(
        2000, ge=10, description="connections + requests in flight per API process; 503 above (uvicorn)"
    )

    # Jobs
    queue_prefix: str = Field("", description="prefix of the queue names (gpu, cpu)")
    device: str = Field("auto", description="torch device of training/evaluation: auto, cpu, cuda, cuda:1")
    lease_s: float = Field(60.0, gt=0, description="a running job's lease; renewed every lease_s/3")
    max_attempts: int = Field(3, ge=1, description="starts of a job before a lost worker fails it")
    reap_interval_s: float = Field(30.0, gt=0, description="how often a worker looks for lost jobs")
    resend_queued_after_s: float = Field(
        600.0, gt=0, description="re-send a job that stayed queued this long (its message may be lost)"
    )
    progress_interval_s: float = Field(0.5, gt=0, description="least time between progress writes")
    cancel_poll_s: float = Field(0.5, gt=0, description="least time between cancel-flag reads")
    visibility_timeout_s: int = Field(
        7 * 24 * 3600, ge=60, description="Redis redelivery delay; longer than the longest job"
    )
    worker_max_tasks_per_child: int | None = Field(
        None, ge=1, description="recycle a worker process after this many jobs (1 frees GPU memory)"
    )
    lipschitz_restarts: int = Field(
        10, ge=0, description="restarts of the empirical Lipschitz estimate after training (0 skips it)"
    )
    sse_poll_s: float = Field(0.25, gt=0, description="how often an event stream looks for new events")

    # devices and threads (issue 18)
    worker_devices: str = Field(
        "auto",
        description="devices of `lbdn worker`, one pool process each: auto (every visible GPU, else "
        "--concurrency CPU processes), cpu, all (every GPU), or a list such as cuda:0,cuda:2 or cpu,cpu",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads of each torch process; unset: usable cores / processes computing "
        "at once, at least 1 (lipcore.runtime.torch_threads)",
    )
    ddp_timeout_s: float = Field(
        1800.0, gt=0, description="timeout of a multi-device job's collectives (a rank stuck this long fails it)"
    )
    ddp_max_restarts: int = Field(
        2, ge=0, description="restarts of a multi-device job from its checkpoint after a rank died"
    )
    worker_seen_s: float = Field(
        600.0, gt=0, description="a worker unseen this long no longer counts for the devices a job may ask for"
    )

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.env == "production":
            missing = [
                name
                for name, value in (("LBDN_DATABASE_URL", self.database_url), ("LBDN_BROKER_URL", self.broker_url))
                if not value
            ]
            if missing:
                raise ValueError(
                    f"LBDN_ENV=production needs {' and '.join(missing)}: the embedded SQLite defaults "
                    "are for development on one machine"
                )
        return self

    # ---- derived ---------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        """The job store's SQLAlchemy URL."""
        return self.database_url or f"sqlite:///{self.home.resolve() / 'lbdn.sqlite'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home.resolve() / 'broker.sqlite'}"

    @property
    def embedded_broker(self) -> bool:
        return self.broker.startswith(("sqla+", "filesystem:"))

    @property
    def jobs_dir(self) -> Path:
        return self.home.resolve() / "jobs"

    @property
    def datasets_dir(self) -> Path:
        """The datasets folder (LBDN_DATA_DIR), absolute; passed to lipcore by the API and the tasks."""
        return (self.data_dir or Path("./data")).resolve()

    @property
    def gpu_queue(self) -> str:
        return f"{self.queue_prefix}gpu"

    @property
    def cpu_queue(self) -> str:
        return f"{self.queue_prefix}cpu"

    def job_dir(self, job_id: str) -> Path:
        """One job's folder on this host: its files with the local store, the worker's scratch run
        directory (pushed to the store as it trains) with S3."""
        return self.jobs_dir / job_id

    def artifact_store(self) -> ArtifactStore:
        """The jobs' files as LBDN_ARTIFACTS says (core.artifacts.open_store); the S3 download cache
        is LBDN_HOME/artifact-cache. Made once per process by its owner (AppServices, TaskContext)."""
        from core.artifacts import open_store

        secret = self.s3_secret_access_key.get_secret_value() if self.s3_secret_access_key else None
        return open_store(
            self.artifacts,
            self.jobs_dir,
            self.home.resolve() / "artifact-cache",
            self.artifact_cache_mb * 2**20,
            endpoint=self.s3_endpoint,
            region=self.s3_region,
            access_key_id=self.s3_access_key_id,
            secret_access_key=secret,
        )


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once from the environment and `.env`."""
    return Settings()
