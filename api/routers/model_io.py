"""/v1/models/import and /v1/models/{id}/export: models in (the paper's checkpoints) and out (ONNX, torch).

An import is a job of kind "import" that is born succeeded (core.submit.record_import): its folder holds the converted
`model.safetensors`, so the certify route, evaluate jobs, artifacts and delete treat it exactly
like a trained model. The upload is read with `torch.load(weights_only=True)` only (lipcore.
paper_checkpoint): a pickle that is not a plain {name: tensor} state dict is refused with 422 and
nothing in it runs. No training code is imported here (lipcore.checkpoint/models/export only).

Before anything is loaded (issue 22): the limits of api.import_limits (imports per minute, bytes kept
per tenant) are checked, then the upload's declared sizes (api.archive: a zip bomb is refused without
inflating it). The spec comes from one place, the form's `spec`: it passes the same data-path rule as
POST /v1/jobs, and a model.safetensors whose embedded spec contradicts it is refused (422) rather
than one silently winning over the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from api import archive, import_limits
from api.auth import current_tenant
from api.deps import CurrentTenant, SessionDep, TenantModel
from api.problems import problem_responses
from api.routers.models import model_weights
from api.schemas import ModelOut
from api.services import AppServices, Services, services_of
from api.views import model_out
from core.settings import Settings
from core.store import jobs, transaction
from core.submit import record_import, resolve_image_folder
from lipcore.rundir import MODEL
from lipcore.spec import ExperimentSpec

router = APIRouter(prefix="/v1/models", tags=["models"])
MAX_SPEC_CHARS = 64 * 1024  # a spec is a few hundred characters; json.loads of deep nesting recurses
# Fields that shape the network or its bound: an embedded spec must agree on them even where the
# form leaves them to their defaults (the file's weights are built from its own spec).
SHAPING = ("model", "layer", "scale", "gamma", "lln", "in_channels", "img_size", "num_classes")
EXPORTS = {"onnx": ("model.onnx", "application/onnx"), "torch": ("model.pt2", "application/octet-stream")}
IMPORT_BODY = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["checkpoint", "spec"],
            "properties": {
                "checkpoint": {
                    "type": "string",
                    "format": "binary",
                    "description": "the paper's model.ckpt (torch.save of the state dict) or our model.safetensors",
                },
                "spec": {
                    "type": "string",
                    "description": "the ExperimentSpec as JSON, e.g. "
                    '{"model": "KWL", "layer": "Sandwich", "scale": "small", "gamma": 2.0, "dataset": "cifar10"}',
                },
            },
        }
    }
}


@dataclass
class ImportUpload:
    spec: ExperimentSpec
    name: str
    data: bytes


async def read_import_body(request: Request) -> ImportUpload:
    """The multipart body: one file part `checkpoint` and a text part `spec` (JSON)."""
    settings = services_of(request).settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise HTTPException(
            415,
            f"send multipart/form-data with parts 'checkpoint' (file) and 'spec' (JSON), not {ctype or 'no content type'}",
        )
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=settings.max_upload_bytes)
    except (MultiPartException, StarletteHTTPException) as e:
        message = str(getattr(e, "message", None) or getattr(e, "detail", e))
        raise HTTPException(400, f"malformed multipart body: {message}") from None
    except ClientDisconnect:
        raise HTTPException(400, "the connection closed before the upload was complete; nothing was imported") from None
    except asyncio.CancelledError:
        # uvicorn cancels a request still uploading when its graceful shutdown (5 s) is over: the
        # client gets this answer instead of a 500 logged as a crash, and nothing was written yet
        raise HTTPException(
            503,
            "the server is stopping and did not receive the whole upload; nothing was imported, send it again",
            headers={"Retry-After": "10"},
        ) from None
    try:
        upload, spec_text = form.get("checkpoint"), form.get("spec")
        if not isinstance(upload, UploadFile):
            raise HTTPException(
                422, "checkpoint: expected a file part named 'checkpoint' (model.ckpt or model.safetensors)"
            )
        if not isinstance(spec_text, str):
            raise HTTPException(422, "spec: expected a text part named 'spec' holding the ExperimentSpec as JSON")
        if len(spec_text) > MAX_SPEC_CHARS:
            raise HTTPException(
                422, f"spec: {len(spec_text):,} characters; expected a JSON object of at most {MAX_SPEC_CHARS:,}"
            )
        try:
            spec = ExperimentSpec.model_validate(json.loads(spec_text))
        except json.JSONDecodeError as e:
            raise HTTPException(422, f"spec: not valid JSON ({e})") from None
        except RecursionError:
            raise HTTPException(422, "spec: nested too deeply; expected a flat JSON object of spec fields") from None
        except ValidationError as e:
            msgs = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()
            )
            raise HTTPException(422, f"spec: {msgs}") from None
        return ImportUpload(spec, upload.filename or "checkpoint", await upload.read())
    finally:
        await form.close()


def _embedded_contradictions(form: ExperimentSpec, spec: ExperimentSpec, text: str, name: str) -> None:
    """422 when a model.safetensors' embedded spec disagrees with the form's (resolved: `spec`) on a
    field the form sets or one that shapes the network (SHAPING); the form's spec is the one kept."""
    try:
        embedded = ExperimentSpec.model_validate_json(text)
    except (ValidationError, ValueError, RecursionError) as e:
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise HTTPException(
            422, f"checkpoint: the spec embedded in {name} is not a valid ExperimentSpec: {first}"
        ) from None
    # data_path is where the images are on this server, not a property of the weights: the form's
    # (checked by the data-path rule) is kept and the file's, from wherever it was trained, ignored
    compared = [
        f for f in ExperimentSpec.model_fields if (f in form.model_fields_set or f in SHAPING) and f != "data_path"
    ]
    differ = [
        f"{f} (form {getattr(spec, f)!r}, file {getattr(embedded, f)!r})"
        for f in compared
        if getattr(spec, f) != getattr(embedded, f)
    ]
    if differ:
        raise HTTPException(
            422,
            f"spec: contradicts the spec embedded in {name}: {'; '.join(differ)}. The form's spec is the one "
            "used; give the values the checkpoint was trained with",
        )


def _checked_spec(upload: ImportUpload, found: archive.Declared, settings: Settings) -> ExperimentSpec:
    """The one spec of the import: the form's, after POST /v1/jobs' data-path rule and the file's check."""
    spec = resolve_image_folder(upload.spec, settings)  # core.submit: the rule of every submission
    if not spec.resolved:
        raise HTTPException(
            422, f"spec: dataset {spec.dataset!r} has no fixed input shape; give in_channels, img_size and num_classes"
        )
    if found.kind == "safetensors" and "spec" in found.metadata:
        _embedded_contradictions(upload.spec, spec, found.metadata["spec"], upload.name)
    return spec


@router.post(
    "/import",
    status_code=201,
    response_model=ModelOut,
    summary="Import a checkpoint (the paper's model.ckpt) as a model you can certify and evaluate",
    openapi_extra={"requestBody": {"required": True, "content": IMPORT_BODY}},
    # the key, then the tenant's import limits, are checked before the body is read: an
    # unauthenticated upload gets 401, not 415, and one over a limit 429 without being parsed
    dependencies=[Depends(current_tenant), Depends(import_limits.check_import_limits)],
    responses=problem_responses(400, 413, 415, 422, 429, 503),
)
def import_model(
    upload: Annotated[ImportUpload, Depends(read_import_body)],
    session: SessionDep,
    tenant: CurrentTenant,
    services: Services,
) -> ModelOut:
    settings = services.settings
    try:
        found = archive.declared(upload.data, upload.name)
        spec = _checked_spec(upload, found, settings)
        archive.check_sizes(found, spec, upload.name, settings.max_upload_bytes)
    except archive.ArchiveError as e:
        raise HTTPException(e.status, str(e)) from None
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.jobs_dir, prefix=".import-") as tmp:
        staged, result = _convert(upload, spec, tmp)
        import_limits.check_bytes(session, tenant, services, adding=result["stored_bytes"])
        job_id = _commit_import(services, tenant, spec, result, staged)
    services.recent_imports.add(tenant)
    made = jobs.get_job(session, tenant, job_id)
    assert made is not None  # committed above
    return model_out(made)


def _convert(upload: ImportUpload, spec: ExperimentSpec, tmp: str) -> tuple[str, dict[str, Any]]:
    """The upload loaded (weights only, checked) and saved as our model.safetensors in `tmp`: its
    path and the import's result (what was read, the bound's factor, the bytes it keeps)."""
    from lipcore.checkpoint import CheckpointError, load_model, save_model

    path = os.path.join(tmp, "upload")
    with open(path, "wb") as f:
        f.write(upload.data)
    try:
        loaded = load_model(path, spec, device="cpu")
    except CheckpointError as e:
        raise HTTPException(422, f"checkpoint: {e}".replace(path, upload.name).replace("upload", upload.name)) from None
    staged = os.path.join(tmp, MODEL)
    save_model(
        staged,
        loaded.model,
        spec,
        classes=loaded.classes,
        mean=loaded.mean,
        std=loaded.std,
        sll_reference_epsilon=loaded.sll_reference_epsilon,
    )
    result = {
        "source": loaded.source,
        "file": upload.name,
        "classes": loaded.classes,
        "gamma_used": loaded.model.gamma,
        "bound_factor": loaded.bound_factor,
        "stored_bytes": os.path.getsize(staged),
    }
    return staged, result


def _commit_import(
    services: AppServices, tenant: str, spec: ExperimentSpec, result: dict[str, Any], staged: str
) -> str:
    """Make the import's job (core.submit.record_import: born succeeded, never queued, so no worker
    sees it) with its model in the artifact store before the row is committed (a put is whole or
    absent): a stop at any point leaves either no job or a whole one (at worst files no job names)."""
    job_id = None
    try:
        with transaction(services.sessions) as s:
            job_id = record_import(s, tenant=tenant, spec=spec, result=result).id
            services.artifacts.put(job_id, MODEL, Path(staged))
    except BaseException:
        if job_id is not None:
            services.artifacts.delete(job_id)
        raise
    return job_id


@router.get(
    "/{model_id}/export",
    summary="Download the model with frozen weights in standard operators (ONNX or torch.export)",
    response_class=FileResponse,
    responses={200: {"content": {"application/onnx": {}, "application/octet-stream": {}}}},
)
def export_model(
    model: TenantModel,
    services: Services,
    format: Annotated[
        Literal["onnx", "torch"], Query(description="onnx (onnxruntime) or torch (torch.export .pt2)")
    ] = "onnx",
) -> FileResponse:
    weights = model_weights(services.artifacts, model.id)
    name, media = EXPORTS[format]
    # Exported once per weights file and host, next to it: in the job's folder (local store, where it
    # is then listed as an artifact) or in this host's download cache, whose folder is the object
    # version's (S3; _export also stores it). A rewritten model.safetensors is exported afresh.
    out = weights.with_name(name)
    if not out.is_file() or out.stat().st_mtime_ns < weights.stat().st_mtime_ns:
        _export(services, model.id, weights, format, out)
    return FileResponse(out, media_type=media, filename=f"{model.id}.{name.split('.')[-1]}")


def _export(services: AppServices, model_id: str, weights: Path, format: str, out: Path) -> None:
    """Write the export of `weights` to `out`; on S3 also store it beside the model, so that it is
    listed among the job's artifacts (as it is in the job's folder on the local store) and goes
    with the job's other objects when the job is deleted."""
    try:
        from lipcore import export
    except ImportError as e:  # the `export` extra is not installed
        raise HTTPException(501, f"export needs the 'export' extra (onnx, onnxruntime): {e}") from None
    loaded = services.model_cache.get(weights)
    try:
        (export.to_onnx if format == "onnx" else export.to_torch)(loaded, out)
    except ImportError as e:
        raise HTTPException(501, f"export needs the 'export' extra (onnx, onnxruntime): {e}") from None
    if services.artifacts.remote:
        services.artifacts.put(model_id, out.name, out)
