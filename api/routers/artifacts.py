"""/v1/jobs/{id}/artifacts: the files of a job's folder (weights, spec, metrics, evaluation results)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import FileResponse

from api.deps import SettingsDep, TenantJob
from api.problems import problem_responses
from api.schemas import ArtifactList, ArtifactOut
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
def list_artifacts(job: TenantJob, settings: SettingsDep, request: Request) -> ArtifactList:
    folder = settings.job_dir(job.id)
    files = sorted(p for p in folder.iterdir() if p.is_file() and re.match(NAME, p.name)) if folder.is_dir() else []
    return ArtifactList(
        job_id=job.id,
        items=[
            ArtifactOut(name=p.name, size=p.stat().st_size, url=artifact_url(settings, request, job.id, p.name))
            for p in files
        ],
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download one file (e.g. model.safetensors)",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_artifact(job: TenantJob, settings: SettingsDep, name: Annotated[str, Path(pattern=NAME)]) -> FileResponse:
    path = settings.job_dir(job.id) / name
    if not path.is_file():
        raise HTTPException(404, f"job {job.id} has no artifact {name!r}")
    return FileResponse(path, media_type=MEDIA.get(path.suffix, "application/octet-stream"), filename=name)
