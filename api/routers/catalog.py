"""/v1/catalog: the model cards and layer families that specs may name (read-only).

Served from lipcore.catalog's model cards, layer families and dataset cards, the same records that validate specs
(torch-free), so the dashboard's choices are never out of step with what the API accepts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentTenant
from api.problems import problem_responses
from lipcore.catalog import cards, datasets, families

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get(
    "/catalog",
    summary="Models (layers, scales, defaults, task) and layer families a spec may name",
    responses=problem_responses(401),
)
def get_catalog(_: CurrentTenant) -> dict[str, Any]:
    """`models`: one card per architecture (`layers` it accepts, `scales`, `defaults`, `forced`
    settings, `task` classifier/regressor, `inputs` vector/image, `lln` allowed); `families`: each
    layer family (`bounded`, `capabilities`); `datasets`: names, each with `inputs` (vector/image)."""
    return {
        "models": [c.as_dict() for c in cards()],
        "families": [f.as_dict() for f in families()],
        "datasets": [d.as_dict() for d in datasets()],
    }
