"""A sweep's finished jobs as records for `lbdn paper report`: accuracies per run, grouped and
averaged over seeds, and the paper's names and colours of the layer families.

Accuracies are in %, radii eps in 1/255 units of [0, 1] pixel space (the paper's).
"""

from __future__ import annotations

import math
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
    """One record per training job: its spec, training result, history, its evaluation's result, and
    `flag`: why its numbers must not be compared with the paper's (see `flag`), or None."""
    evals = {j["train_job_id"]: j for j in sweep.get("jobs") or [] if j["role"] == "evaluate"}
    out = []
    for j in sweep.get("jobs") or []:
        if j["role"] != "train" or j["status"] != "succeeded":
            continue
        ev = evals.get(j["job_id"])
        rec = {
            "job_id": j["job_id"],
            "spec": j.get("spec") or {},
            "train": j.get("result") or {},
            "history": j.get("history") or [],
            "eval": (ev.get("result") or {}) if ev and ev["status"] == "succeeded" else None,
        }
        rec["flag"] = flag(rec)
        out.append(rec)
    return out


# A model whose empirical Lipschitz lower bound is below this fraction of gamma maps every probe
# point to (almost) the same output: it collapsed to a constant, whatever its loss says.
CONSTANT_TIGHTNESS = 1e-4
# A classifier within this factor of 100/classes % test accuracy learnt nothing (or one class).
CHANCE_FACTOR = 1.2


def _finite(value: Any) -> bool:
    """False when a number anywhere in value (nested dicts/lists) is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def flag(rec: Record) -> str | None:
    """Why a succeeded run is no result: "diverged" (NaN or infinite numbers), "collapsed" (constant
    output: tightness 0), "chance accuracy" (a classifier that learnt nothing); None when healthy."""
    tr, spec = rec["train"], rec["spec"]
    if not (_finite(tr) and _finite(rec["eval"] or {}) and _finite(rec["history"])):
        return "diverged"
    tight = tr.get("tightness")
    if tight is not None and abs(tight) < CONSTANT_TIGHTNESS:
        return "collapsed"
    classes = spec.get("num_classes") or len(tr.get("classes") or [])
    acc = tr.get("test_acc")
    if acc is not None and classes >= 2 and acc <= CHANCE_FACTOR * 100.0 / classes:
        return "chance accuracy"
    return None


def healthy(recs: list[Record]) -> list[Record]:
    """The runs whose numbers can stand beside the paper's."""
    return [r for r in recs if not r.get("flag")]


def group_flag(recs: list[Record]) -> str | None:
    """The flag(s) of a group whose runs are all flagged (nothing to average), else None."""
    if not recs or healthy(recs):
        return None
    return "/".join(sorted({r["flag"] for r in recs}))


def cell(ours: float | None, paper: float | None, recs: list[Record], digits: int = 1) -> str:
    """A table cell: `ours (paper)`, or the group's flag in place of ours when every run is flagged;
    `*` marks a mean over fewer runs than the group has (its flagged ones are left out)."""
    bad = group_flag(recs)
    if bad:
        return f"**{bad}** ({num(paper)})" if paper is not None else f"**{bad}**"
    mark = "*" if len(healthy(recs)) < len(recs) else ""
    return pair(ours, paper, digits) + mark


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
    """`accuracies` averaged over the healthy runs (seeds) given."""
    accs = [accuracies(r) for r in healthy(recs)]
    keys = ["clean"] + [f"{k}_{e}" for k in ("cert", "aa") for e in EPS]
    return {k: mean(a[k] for a in accs) for k in keys} if recs else {}


def layers_in_order(keys: Iterable[str | None]) -> list[str]:
    """The layer families present, in the paper's order (unknown ones after, sorted)."""
    present = {k for k in keys if k}
    return [x for x in LAYER_ORDER if x in present] + sorted(present - set(LAYER_ORDER))


def gamma_label(g: Any) -> str:
    return f"{float(g):g}"


def _span(values: set[int]) -> str:
    return "-" if not values else str(min(values)) if len(values) == 1 else f"{min(values)}-{max(values)}"


def budget(preset: dict[str, Any], sweep: dict[str, Any]) -> tuple[str, bool]:
    """("20 of the paper's 200 epochs, 1 of the paper's 3 seeds", whether it is short of the paper's):
    the sweep's training budget beside the preset's. Seeds are counted per grid point."""
    lines = preset.get("lines") or []
    paper_epochs = {int(line["spec"]["epochs"]) for line in lines if line["spec"].get("epochs")}
    paper_seeds = {len((line.get("grid") or {}).get("seed") or [None]) for line in lines}
    specs = [j.get("spec") or {} for j in sweep.get("jobs") or [] if j["role"] == "train"]
    epochs = {int(s["epochs"]) for s in specs if s.get("epochs")}
    points: dict[tuple[tuple[str, str], ...], set[Any]] = defaultdict(set)
    for s in specs:
        points[tuple(sorted((k, repr(v)) for k, v in s.items() if k != "seed"))].add(s.get("seed"))
    seeds = {len(v) for v in points.values()}
    text = f"{_span(epochs)} of the paper's {_span(paper_epochs)} epochs, {_span(seeds)} of the paper's " + (
        f"{_span(paper_seeds)} seed" + ("s" if max(paper_seeds, default=1) > 1 else "")
    )
    short = bool(epochs and paper_epochs and min(epochs) < max(paper_epochs)) or bool(
        seeds and paper_seeds and min(seeds) < max(paper_seeds)
    )
    return text, short
