"""/v1/models: trained models (succeeded training jobs) and certificates for the caller's inputs."""

from __future__ import annotations

import time
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import select

from api.certify import certify_batch, input_shape
from api.deps import CurrentTenant, SessionDep, SettingsDep, TenantModel
from api.schemas import CertifyOut, ModelOut, ModelPage
from api.uploads import RawInputs, decode, read_certify_body
from api.views import model_out
from lipcore.rundir import MODEL
from worker.settings import Settings
from worker.store import Job

router = APIRouter(prefix="/v1/models", tags=["models"])
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
    q = select(Job).where(Job.tenant == tenant, Job.kind == "train", Job.status == "succeeded")
    if cursor:
        q = q.where(Job.pk < int(cursor))
    rows = list(session.scalars(q.order_by(Job.pk.desc()).limit(limit)))
    return ModelPage(items=[model_out(j) for j in rows], next_cursor=str(rows[-1].pk) if len(rows) == limit else None)


@router.get("/{model_id}", response_model=ModelOut, summary="One trained model")
def get_model(model: TenantModel) -> ModelOut:
    return model_out(model)


@router.post(
    "/{model_id}/certify",
    response_model=CertifyOut,
    summary="Certified l2 radii (and optionally an attack's upper bound) for your inputs",
    openapi_extra={"requestBody": {"required": True, "content": CERTIFY_BODY}},
)
async def certify_inputs(
    model: TenantModel,
    raw: Annotated[RawInputs, Depends(read_certify_body)],
    request: Request,
    settings: SettingsDep,
    attack: Annotated[bool, Query(description="also search adversarial examples")] = False,
) -> CertifyOut:
    # torch runs on the certify threads (app.state.certify_limiter, LBDN_CERTIFY_CONCURRENCY), never
    # on the event loop nor on the threads of the other routes; a request waiting for its turn holds
    # no thread and no DB connection.
    return await anyio.to_thread.run_sync(
        _certify, model, raw, request, settings, attack, limiter=request.app.state.certify_limiter
    )


def _certify(model: Job, raw: RawInputs, request: Request, settings: Settings, attack: bool) -> CertifyOut:
    t0 = time.perf_counter()
    path = settings.job_dir(model.id) / MODEL
    if not path.is_file():
        raise HTTPException(404, f"model {model.id} has no weights file (was it removed?)")
    loaded = request.app.state.model_cache.get(path)
    if loaded.model.gamma is None:
        raise HTTPException(422, f"model {model.id} has no Lipschitz bound (Plain layers), so nothing can be certified")
    shape = input_shape(loaded.spec)
    x = decode(
        raw,
        shape,
        is_image=bool(loaded.spec.img_size),
        max_inputs=settings.max_certify_inputs,
        max_pixels=settings.max_image_pixels,
    )
    bound, results = certify_batch(
        loaded, x, scale=raw.scale, attack=attack, attack_steps=settings.certify_attack_steps
    )
    metrics = request.app.state.metrics
    metrics.certify_latency.labels(str(attack).lower()).observe(time.perf_counter() - t0)
    metrics.certified_inputs.inc(len(results))
    return CertifyOut(model_id=model.id, input_shape=list(shape), lipschitz_bound=bound, results=results)
