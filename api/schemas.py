"""Request and response models of the HTTP API (separate from the tables in core.store)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from core import labels as lab
from core.states import JobKind, JobState, SweepRole
from lipcore.spec import ExperimentSpec

# Upper bound of integer query parameters (offsets, sequence numbers, epochs): exact in JSON numbers
# and far inside the stores' 64-bit integers, so no database ever sees an out-of-range value.
MAX_QUERY_INT = 2**53 - 1

# Job states and kinds are core.states' (one definition for the tables and these schemas); request
# bodies keep string literals as their `kind` tags, which pydantic's errors quote as they are.


# ---- requests -------------------------------------------------------------------------------
class AttackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eps: list[Annotated[int, Field(ge=1, le=255)]] = Field(
        [36, 72, 108], min_length=1, max_length=16, description="l2 radii in 1/255 units ([0,1] pixel space)"
    )
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    n_examples: int = Field(1000, ge=1, le=100_000, description="test points attacked")
    attacks: list[Literal["apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square"]] | None = Field(
        None, min_length=1, description="version 'custom' only: AutoAttack's attacks to run"
    )

    @model_validator(mode="after")
    def _custom_needs_attacks(self) -> AttackParams:
        if (self.version == "custom") != (self.attacks is not None):
            raise ValueError("give 'attacks' exactly when version is 'custom', e.g. ['apgd-ce', 'square']")
        return self


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: int = Field(
        1, ge=1, le=64, description="devices of one worker to train on at once (data-parallel when above 1)"
    )


RunName = Annotated[str, Field(max_length=lab.MAX_NAME * 2), AfterValidator(lab.check_name)]
RunTags = Annotated[list[Annotated[str, Field(max_length=lab.MAX_TAG * 2)]], AfterValidator(lab.check_tags)]
RunNote = Annotated[str, AfterValidator(lab.check_note)]
_NAME = "what you call the run (1-200 characters); GET /v1/jobs?name= finds it by substring"
_TAGS = "up to 20 tags: a-z 0-9 _ . : + / - (any case given, kept lowercase); GET /v1/jobs?tag= filters"
_NOTE = "free text (up to 10,000 characters)"


class RunLabels(BaseModel):
    """A job's labels (core.labels): they never change what runs."""

    model_config = ConfigDict(extra="forbid")

    name: RunName | None = Field(None, description=_NAME)
    tags: RunTags | None = Field(None, description=_TAGS)
    note: RunNote | None = Field(None, description=_NOTE)

    def labels(self) -> lab.Labels:
        return lab.Labels(name=self.name, tags=self.tags, note=self.note)


class JobPatch(RunLabels):
    """PATCH /v1/jobs/{id}: the labels given are set (null or [] clears one), the others kept."""


class TrainRequest(RunLabels):
    kind: Literal["train"]
    spec: ExperimentSpec
    resources: Resources | None = Field(None, description="what the job needs besides its spec; default 1 device")


class EvaluateRequest(RunLabels):
    kind: Literal["evaluate"]
    model_id: str = Field(max_length=40)
    attack: AttackParams = AttackParams()


JobRequest = Annotated[TrainRequest | EvaluateRequest, Field(discriminator="kind")]


# ---- jobs -----------------------------------------------------------------------------------
class ProgressOut(BaseModel):
    epoch: int
    epochs: int
    step: int
    steps: int
    fraction: float = Field(description="share of all training steps done, 0..1")
    eta_s: float | None = Field(None, description="estimated seconds left")


class JobOut(BaseModel):
    id: str
    kind: JobKind
    status: JobState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    name: str | None = None
    tags: list[str] = Field(default_factory=list)
    note: str | None = None
    spec: dict[str, Any]
    model_id: str | None = Field(
        None,
        description="the model the job is about: evaluate jobs the model evaluated, imports the model made (their own id)",
    )
    sweep_id: str | None = Field(None, description="the sweep the job belongs to (GET /v1/sweeps/{id})")
    attack: dict[str, Any] | None = Field(None, description="evaluate jobs: the attack settings")
    progress: ProgressOut | None = None
    metrics: dict[str, Any] | None = Field(None, description="the latest epoch's metrics")
    result: dict[str, Any] | None = Field(None, description="training summary or evaluation results")
    error: str | None = None
    attempt: int = Field(0, description="times a worker started this job")
    cancel_requested: bool = False
    resumed_from: dict[str, Any] | None = Field(None, description="checkpoint position of the last resume")
    resources: dict[str, Any] | None = Field(None, description="what was asked for besides the spec: devices")
    device: str | None = Field(None, description="where it runs or ran: cuda:1, cpu:0, or cpu:0,cpu:1 (several)")
    host: str | None = Field(None, description="the host name of its worker")
    worker: str | None = Field(None, description="the worker's name (Celery node name)")


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next (older) page")


class MetricsOut(BaseModel):
    job_id: str
    items: list[dict[str, Any]] = Field(description="one object per epoch, oldest first")


class LogsOut(BaseModel):
    job_id: str
    offset: int
    next_offset: int
    lines: list[str]


class ArtifactOut(BaseModel):
    name: str
    size: int = Field(description="bytes")
    url: str


class ArtifactList(BaseModel):
    job_id: str
    items: list[ArtifactOut]


# ---- models and certificates ----------------------------------------------------------------
class ModelOut(BaseModel):
    id: str = Field(description="the id of the training job")
    spec: dict[str, Any]
    gamma: float | None = Field(description="certified l2 Lipschitz bound, model-input space to logits")
    classes: list[str] | None = None
    clean_acc: float | None = Field(None, description="test accuracy, %")
    certified_acc: dict[str, float | None] = Field(
        default_factory=dict, description="certified test accuracy (%) by l2 radius in 1/255 units"
    )
    lipschitz_lower_bound: float | None = None
    created_at: datetime
    finished_at: datetime | None = None


class ModelPage(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None = None


class LipschitzBound(BaseModel):
    gamma: float = Field(
        description="the l2 Lipschitz bound the network is built to have, model-input space; for LLN "
        "models a bound of the map from the input to the LLN head's input (not of the logits)"
    )
    verified: float | None = Field(
        description="an upper bound on the same map verified layer by layer in float64 from the weights "
        "the certificate uses (lipcore.certify.verified_bound); ~gamma for a sound model; null when it is "
        "not a finite number (weights that overflow): then nothing is certified, every radius is 0"
    )
    used: float | None = Field(
        description="max(gamma, verified): the bound the radii use; null (every radius 0) when either is not finite"
    )
    kind: Literal["sqrt2*gamma", "lln", "gamma (single output)"] = Field(
        description="how each logit gap is bounded: sqrt2*used; lln: used * ||w_i - w_j|| (head rows); "
        "single output: used"
    )


class CertifiedInput(BaseModel):
    index: int
    predicted: int = Field(description="class index (single output: 1 if f(x) > 0.5 else 0); -1 if not finite")
    class_name: str | None = None
    logits: list[float]
    margin: float | None = Field(description="logit gap to the runner-up (single output: |f(x) - 0.5|)")
    radius: float = Field(description="certified l2 radius in model-input space (after normalisation)")
    radius_pixel: float = Field(
        description="certified l2 radius in [0,1] pixel space ((radius - input rounding) * min(std)) for image "
        "models, whose inputs are normalised pixels; for vector models (no normalisation) equal to radius"
    )
    attack_radius: float | None = Field(
        None, description="?attack=true: smallest adversarial l2 perturbation found, model-input space"
    )
    attack_radius_pixel: float | None = Field(
        None, description="?attack=true: the same perturbation's l2 norm in [0,1] pixel space (||delta * std||)"
    )


class AttackReport(BaseModel):
    steps: int = Field(description="steps asked for (LBDN_CERTIFY_ATTACK_STEPS)")
    steps_run: int = Field(description="steps taken")
    cut_short: bool = Field(description="true when the search stopped before `steps`; its radii are still real")
    reason: Literal["time budget", "client disconnected"] | None = Field(
        None, description="why it was cut short (time budget: LBDN_CERTIFY_ATTACK_TIMEOUT_S)"
    )


class CertifyOut(BaseModel):
    model_id: str
    input_shape: list[int]
    lipschitz_bound: LipschitzBound
    results: list[CertifiedInput]
    attack: AttackReport | None = Field(None, description="?attack=true: how the adversarial search went")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# ---- sweeps and the paper's presets ---------------------------------------------------------
class SweepRequest(BaseModel):
    """A grid of training jobs: a paper preset by name, or a base spec with a grid."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="a label (default: the preset's name)")
    tags: RunTags | None = Field(None, description="tags of every job of the sweep; " + _TAGS)
    preset: str | None = Field(None, max_length=100, description="a preset of GET /v1/paper/presets")
    spec: dict[str, Any] | None = Field(None, description="base ExperimentSpec fields (without preset)")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="values to sweep over: any of gamma, layer, scale, seed"
    )
    epochs: int | None = Field(None, ge=1, le=100_000, description="override every job's epochs")
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, max_length=50, description="override every job's seeds (a seed grid)"
    )
    overrides: dict[str, Any] | None = Field(
        None, description='spec fields set on every job, e.g. {"train_batch_size": 64} for a small GPU'
    )
    only: dict[str, list[Any]] | None = Field(
        None, description='keep only the jobs whose spec has one of these values, e.g. {"layer": ["Sandwich"]}'
    )
    evaluate: AttackParams | bool | None = Field(
        None,
        description="evaluate each trained model (AutoAttack beside certificates): settings, true for the "
        "defaults, false for none; default: the preset's choice (the paper's --mode eval), none otherwise",
    )

    @model_validator(mode="after")
    def _one_source(self) -> SweepRequest:
        if (self.preset is None) == (self.spec is None):
            raise ValueError("give either 'preset' (a paper preset name) or 'spec' (base spec fields), not both")
        if self.preset is not None and self.grid:
            raise ValueError("'grid' goes with 'spec'; a preset has its own grid (use 'epochs' and 'seeds')")
        return self


class SweepJobOut(BaseModel):
    job_id: str
    role: SweepRole
    point: dict[str, Any] = Field(description="this job's grid values")
    train_job_id: str | None = Field(None, description="evaluate jobs: the trained model")
    status: JobState | Literal["deleted"]
    spec: dict[str, Any] | None = None
    progress: ProgressOut | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    history: list[dict[str, Any]] | None = Field(None, description="?history=true: per-epoch metrics of a training job")


class SweepOut(BaseModel):
    id: str
    name: str
    preset: str | None = None
    created_at: datetime
    request: dict[str, Any]
    evaluate: dict[str, Any] | None = None
    status: Literal["running", "succeeded", "failed", "cancelled"] = Field(
        description="running while any job is queued or running; then succeeded, failed or cancelled"
    )
    counts: dict[str, int] = Field(description="jobs by status")
    jobs: list[SweepJobOut] | None = Field(None, description="omitted in lists")


class SweepPage(BaseModel):
    items: list[SweepOut]
    next_cursor: str | None = None
