"""A sweep's finished jobs as records for `lbdn paper report`: accuracies per run, grouped and
averaged over seeds, and the paper's names and colours of the layer families.

Accuracies are in %, radii eps in 1/255 units of [0, 1] pixel space (the paper's).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

EPS = ("36", "72", "108")
LAYER_ORDER = ("Sandwich", "SLL", "Orthogon", "Aol", "Plain")
PAPER_NAME = {
    "Sandwich": "Sandwich",
    "SLL": "SLL",
    "Orthogon": "Orthogonal (Cayley)",
    "Aol": "AOL",
    "Plain": "CNN (Plain)",
}
COLOURS = {"Sandwich": "tab:red", "SLL": "tab:green", "Orthogon": "tab:blue", "Aol": "tab:orange", "Plain": "tab:gray"}

Record = dict[str, Any]


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values given (None: missing); None when none is given."""
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pair(ours: float | None, paper: float | None, digits: int = 1) -> str:
    """`ours (paper)`, or ours alone when the paper has no number."""
    return f"{num(ours, digits)} ({num(paper)})" if paper is not None else num(ours, digits)


def runs(sweep: dict[str, Any]) -> list[Record]:
    """One record per training job: its spec, training result, history and its evaluation's result."""
    evals = {j["train_job_id"]: j for j in sweep.get("jobs") or [] if j["role"] == "evaluate"}
    out = []
    for j in sweep.get("jobs") or []:
        if j["role"] != "train" or j["status"] != "succeeded":
            continue
        ev = evals.get(j["job_id"])
        out.append(
            {
                "spec": j.get("spec") or {},
                "train": j.get("result") or {},
                "history": j.get("history") or [],
                "eval": (ev.get("result") or {}) if ev and ev["status"] == "succeeded" else None,
            }
        )
    return out


def group(records: list[Record], *keys: str) -> dict[tuple, list[Record]]:
    """The records by the values of these spec fields (runs that differ only in seed share a group)."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        groups[tuple(r["spec"].get(k) for k in keys)].append(r)
    return groups


def accuracies(rec: Record) -> dict[str, float | None]:
    """clean, cert_<eps>, aa_<eps> of one run: the evaluation's numbers (pixel space, AutoAttack),
    or the training summary's clean and certified accuracy when it was not evaluated."""
    ev, tr = rec["eval"], rec["train"]
    if ev:
        out: dict[str, float | None] = {"clean": ev.get("clean_acc")}
        for e in EPS:
            out[f"cert_{e}"] = (ev.get("certified_acc") or {}).get(e)
            out[f"aa_{e}"] = (ev.get("autoattack_acc") or {}).get(e)
        return out
    out = {"clean": tr.get("test_acc")}
    for e in EPS:
        out[f"cert_{e}"] = tr.get(f"cert_acc_{e}")
        out[f"aa_{e}"] = None
    return out


def mean_acc(recs: list[Record]) -> dict[str, float | None]:
    """`accuracies` averaged over the runs (seeds) given."""
    accs = [accuracies(r) for r in recs]
    return {k: mean(a[k] for a in accs) for k in (accs[0] if accs else {})}


def layers_in_order(keys: Iterable[str | None]) -> list[str]:
    """The layer families present, in the paper's order (unknown ones after, sorted)."""
    present = {k for k in keys if k}
    return [x for x in LAYER_ORDER if x in present] + sorted(present - set(LAYER_ORDER))


def gamma_label(g: Any) -> str:
    return f"{float(g):g}"
