"""/v1/models: trained models (succeeded training jobs) and certificates for the caller's inputs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy import select

from api.batcher import BatchKey, ClientGone
from api.certify import AttackBudget, certify_batch, input_shape
from api.deps import CurrentTenant, SessionDep, TenantModel, TenantModelId
from api.problems import problem_responses
from api.schemas import AttackReport, CertifiedInput, CertifyOut, LipschitzBound, ModelOut, ModelPage
from api.services import AppServices, Services
from api.uploads import RawInputs, decode, parse_json, read_certify_body
from api.views import model_out
from core.artifacts import ArtifactStore
from core.states import MODEL_KINDS, JobState
from core.store import Job
from lipcore.rundir import MODEL

router = APIRouter(prefix="/v1/models", tags=["models"], responses=problem_responses(401, 413, 422))
# The certify body is read by content type (api.uploads), so its schema is declared by hand.
CERTIFY_BODY = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": {"type": "array", "items": {}, "description": "inputs of the model's shape"},
                "scale": {"enum": ["pixel", "model"], "default": "pixel"},
            },
        }
    },
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "scale": {"enum": ["pixel", "model"], "default": "pixel"},
            },
        }
    },
    "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
}


@router.get("", response_model=ModelPage, summary="Your trained models, newest first")
def list_models(
    session: SessionDep,
    tenant: CurrentTenant,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> ModelPage:
    q = select(Job).where(Job.tenant == tenant, Job.kind.in_(MODEL_KINDS), Job.status == JobState.succeeded)
    if cursor:
        q = q.where(Job.pk < int(cursor))
    rows = list(session.scalars(q.order_by(Job.pk.desc()).limit(limit)))
    return ModelPage(items=[model_out(j) for j in rows], next_cursor=str(rows[-1].pk) if len(rows) == limit else None)


@router.get("/{model_id}", response_model=ModelOut, summary="One trained model", responses=problem_responses(404))
def get_model(model: TenantModel) -> ModelOut:
    return model_out(model)


@router.post(
    "/{model_id}/certify",
    response_model=CertifyOut,
    summary="Certified l2 radii (and optionally an attack's upper bound) for your inputs",
    openapi_extra={"requestBody": {"required": True, "content": CERTIFY_BODY}},
    responses=problem_responses(400, 404, 413, 415, 422, 429),
)
async def certify_inputs(
    model: TenantModelId,
    request: Request,
    services: Services,
    tenant: CurrentTenant,
    attack: Annotated[bool, Query(description="also search adversarial examples")] = False,
) -> Response:
    t0 = time.perf_counter()
    metrics = services.metrics
    path = await weights_of(services, model)
    # Every certify request holds a slot (api.batcher.CertifySlots: 429 beyond the per-tenant and total
    # limits) from before its body is read until it is answered: bodies in memory and queued work are
    # bounded whatever the clients send. The body is read here, not as a dependency, to be inside it.
    with services.certify_slots.hold(tenant):
        raw = await read_certify_body(request)
        if attack:
            body, n = await _attack(model, raw, request, services, tenant)
        else:
            # batched with concurrent requests of this model and tenant (api.batcher), computed and
            # serialised in a certify process: never on the API's threads or its GIL; the bytes are the
            # CertifyOut of response_model, passed through as they are
            key = BatchKey(str(path), tenant, model)
            try:
                out = await services.certify_batcher.certify(key, raw, partial(_disconnected, request))
            except ClientGone:  # nobody reads this answer; 499 (nginx's "client closed") in the metrics
                return Response(status_code=499)
            body, n = out.body, out.inputs
    metrics.certify_latency.labels(str(attack).lower()).observe(time.perf_counter() - t0)
    metrics.certified_inputs.inc(n)
    return Response(body, media_type="application/json")


async def _attack(
    model: str, raw: RawInputs, request: Request, services: AppServices, tenant: str
) -> tuple[bytes, int]:
    # The attack runs on the API's attack threads (it polls for the client's disconnect). Its slot
    # (api.certify.AttackSlots: 429 beyond the limits) is taken here, before a thread: the threads
    # are as many as the slots, so a request that gets a slot never waits for a thread, and one that
    # gets none is answered at once instead of queueing behind running attacks.
    metrics = services.metrics
    with services.attack_slots.hold(tenant):
        metrics.certify_attacks_active.inc()
        try:
            bound, results, report, shape = await anyio.to_thread.run_sync(
                _certify_and_attack, model, raw, request, services, limiter=services.limiters.attacks
            )
        finally:
            metrics.certify_attacks_active.dec()
    answer = CertifyOut(model_id=model, input_shape=list(shape), lipschitz_bound=bound, results=results, attack=report)
    return answer.model_dump_json().encode(), len(results)


def _certify_and_attack(
    model: str, raw: RawInputs, request: Request, services: AppServices
) -> tuple[LipschitzBound, list[CertifiedInput], AttackReport | None, tuple[int, ...]]:
    settings = services.settings
    loaded = services.model_cache.get(model_weights(services.artifacts, model))
    if loaded.model.gamma is None:
        raise HTTPException(422, f"model {model} has no Lipschitz bound (Plain layers), so nothing can be certified")
    shape = input_shape(loaded.spec)
    raw = parse_json(
        raw, max_numbers=settings.max_certify_inputs * math.prod(shape), max_depth=settings.certify_json_max_depth
    )
    x = decode(
        raw,
        shape,
        is_image=bool(loaded.spec.img_size),
        max_inputs=settings.max_certify_inputs,
        max_pixels=settings.max_image_pixels,
    )
    budget = AttackBudget(settings.certify_attack_timeout_s, _disconnect_probe(request))
    bound, results, report = certify_batch(
        loaded, x, scale=raw.scale, attack=True, attack_steps=settings.certify_attack_steps, budget=budget
    )
    return bound, results, report, tuple(shape)


def model_weights(store: ArtifactStore, model: str) -> Path:
    """The model's weights file on this host (with S3, the host's cached copy: downloaded once per
    host and object version, core.artifacts.DownloadCache); 404 when it has none."""
    try:
        return store.local_path(model, MODEL)
    except FileNotFoundError:
        raise HTTPException(404, f"model {model} has no weights file (was it removed?)") from None


async def weights_of(services: AppServices, model: str) -> Path:
    """model_weights from the event loop: a local file is a stat, an object a HEAD request (and maybe
    a download), which runs on a thread so that it holds up no other request."""
    if not services.artifacts.remote:
        return model_weights(services.artifacts, model)
    return await anyio.to_thread.run_sync(model_weights, services.artifacts, model)


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _disconnect_probe(request: Request) -> Callable[[], bool]:
    """A blocking 'has the client gone?' for the attack on its API thread (asks the event loop)."""

    def probe() -> bool:
        try:
            return bool(anyio.from_thread.run(request.is_disconnected))
        except RuntimeError:  # not in a worker thread of the loop (e.g. called directly in a test)
            return False

    return probe
