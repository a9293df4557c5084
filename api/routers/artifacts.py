"""/v1/jobs/{id}/artifacts: the files of a job (weights, spec, metrics, evaluation results), from the
artifact store (core.artifacts: this host's LBDN_HOME/jobs, or S3)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.responses import Response

from api.deps import TenantJob
from api.problems import problem_responses
from api.schemas import ArtifactList, ArtifactOut
from api.services import Services
from core.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], responses=problem_responses(401, 404, 413, 422))
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # plain file names only: no paths, no hidden files
MEDIA = {".json": "application/json", ".txt": "text/plain; charset=utf-8"}


def artifact_url(settings: Settings, request: Request, job_id: str, name: str) -> str:
    """LBDN_PUBLIC_URL + the file's path, or the path alone (relative to the server) when that is
    unset: never the request's Host header, which a client chooses (the dashboard fetches these
    URLs with the API key attached)."""
    path = request.app.url_path_for("get_artifact", job_id=job_id, name=name)
    return f"{settings.public_url.rstrip('/')}{path}" if settings.public_url else str(path)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, summary="List a job's files")
def list_artifacts(job: TenantJob, services: Services, request: Request) -> ArtifactList:
    files = [a for a in services.artifacts.list(job.id) if re.match(NAME, a.name)]
    return ArtifactList(
        job_id=job.id,
        items=[
            ArtifactOut(name=a.name, size=a.size, url=artifact_url(services.settings, request, job.id, a.name))
            for a in files
        ],
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download one file (e.g. model.safetensors)",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_artifact(job: TenantJob, services: Services, name: Annotated[str, Path(pattern=NAME)]) -> Response:
    store = services.artifacts
    found = store.head(job.id, name)
    if found is None:
        raise HTTPException(404, f"job {job.id} has no artifact {name!r}")
    media = MEDIA.get("." + name.rsplit(".", 1)[-1] if "." in name else "", "application/octet-stream")
    if not store.remote:  # this host's file: sendfile, ranges and validators as before
        try:
            return FileResponse(store.local_path(job.id, name), media_type=media, filename=name)
        except FileNotFoundError:  # deleted since
            raise HTTPException(404, f"job {job.id} has no artifact {name!r}") from None
    # an object is streamed through in chunks (never whole in memory); its size is known up front
    headers = {"Content-Length": str(found.size), "Content-Disposition": f'attachment; filename="{name}"'}
    if found.etag:
        headers["ETag"] = found.etag if found.etag.startswith('"') else f'"{found.etag}"'
    return StreamingResponse(store.stream(job.id, name), media_type=media, headers=headers)
