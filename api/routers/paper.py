"""/v1/paper/presets: the paper's experiments as presets, with the numbers the paper published."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from api.deps import CurrentTenant
from lipcore.catalog.presets import PRESETS

router = APIRouter(prefix="/v1/paper", tags=["sweeps"])


@router.get("/presets", summary="The paper's experiments that `POST /v1/sweeps` can run by name")
def list_presets(_: CurrentTenant) -> dict[str, Any]:
    return {"items": [p.as_dict() for p in PRESETS.values()]}


@router.get("/presets/{name}", summary="One preset: its jobs' specs and grids, and the published numbers")
def get_preset(name: str, _: CurrentTenant) -> dict[str, Any]:
    preset = PRESETS.get(name)
    if preset is None:
        raise HTTPException(404, f"no preset {name!r}; expected one of {sorted(PRESETS)}")
    return preset.as_dict()
