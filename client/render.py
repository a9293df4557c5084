"""Text of jobs, models and certificates for the terminal (rich tables and plain lines)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.table import Column, Table


def fmt(value: Any, digits: int = 2) -> str:
    """A number with `digits` decimals; '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def describe(spec: dict[str, Any]) -> str:
    """KWL-Sandwich-small gamma=1 cifar10 (100 ep)."""
    if not spec:
        return "-"
    gamma = spec.get("gamma")
    g = f" g={gamma:g}" if isinstance(gamma, (int, float)) else ""
    lln = "-LLN" if spec.get("lln") else ""
    return f"{spec.get('model')}-{spec.get('layer')}-{spec.get('scale')}{lln}{g} {spec.get('dataset')} {spec.get('epochs')}ep"


def _when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%m-%d %H:%M")


def jobs_table(items: list[dict[str, Any]]) -> Table:
    t = Table(box=box.SIMPLE)
    t.add_column("job", no_wrap=True)
    t.add_column("kind")
    t.add_column("status")
    t.add_column("experiment", min_width=24)
    t.add_column("progress")
    t.add_column("created", no_wrap=True)
    for j in items:
        p = j.get("progress") or {}
        prog = f"epoch {p['epoch']}/{p['epochs']}" if p and j["status"] == "running" else ""
        what = describe(j.get("spec") or {})
        if j["kind"] == "evaluate":
            what = f"model {j.get('model_id')}"
        t.add_row(j["id"], j["kind"], j["status"], what, prog, _when(j.get("created_at")))
    return t


def _duration(job: dict[str, Any]) -> str:
    a, b = job.get("started_at"), job.get("finished_at")
    if not (a and b):
        return ""
    s = int((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds())
    return f" in {s // 60}m{s % 60:02d}s"


def summary_lines(job: dict[str, Any]) -> list[str]:
    """What a finished (or running) job amounts to, a few lines."""
    lines = [
        f"job {job['id']} {job['status']}{_duration(job)}: {describe(job.get('spec') or {})}"
        if job["kind"] == "train"
        else f"job {job['id']} {job['status']}{_duration(job)}: evaluate model {job.get('model_id')}"
    ]
    if job.get("error"):
        lines.append(f"  error: {job['error']}")
    r = job.get("result") or job.get("metrics") or {}
    if job["kind"] == "train" and r:
        if r.get("test_acc") is not None:
            lines.append(f"  test accuracy {fmt(r['test_acc'], 2)}%")
        elif r.get("test_loss") is not None:
            lines.append(f"  test loss {fmt(r['test_loss'], 5)}")
        certs = {k.removeprefix("cert_acc_"): v for k, v in r.items() if k.startswith("cert_acc_")}
        if certs:
            lines.append("  certified accuracy " + ", ".join(f"{fmt(v, 2)}% at {k}/255" for k, v in certs.items()))
        if r.get("lipschitz_lower_bound") is not None:
            tight = r.get("tightness")
            lines.append(
                f"  Lipschitz bound gamma={fmt(r.get('gamma'), 3)}, empirical lower bound "
                f"{fmt(r['lipschitz_lower_bound'], 4)}" + (f" (tightness {100 * tight:.1f}%)" if tight else "")
            )
        if r.get("params") is not None:
            lines.append(f"  {r['params']:,} parameters, {r.get('epochs')} epochs")
    elif job["kind"] == "evaluate" and r:
        lines.append(f"  clean accuracy {fmt(r.get('clean_acc'), 2)}% on {r.get('n')} test inputs")
        for eps in r.get("eps") or []:
            key = f"{eps:g}" if isinstance(eps, float) else str(eps)
            aa = (r.get("autoattack_acc") or {}).get(key)
            ca = (r.get("certified_acc") or {}).get(key)
            lines.append(f"  eps {key}/255: AutoAttack {fmt(aa, 2)}%, certified {fmt(ca, 2)}%")
    if job["status"] == "succeeded" and job["kind"] == "train":
        lines.append(f"  certify inputs: lbdn certify {job['id']} FILE...   files: lbdn pull {job['id']}")
    return lines


def certify_table(answer: dict[str, Any], names: list[str]) -> Table:
    """file, class, margin, certified radius and attacked radius (l2): in pixel /255 units for image
    models; for a single-output regression (the Toy) its output f(x) and radii in x's own units."""
    bound = answer.get("lipschitz_bound") or {}
    results = answer["results"]
    single = bool(results) and len(results[0].get("logits") or []) == 1
    scale, unit = (1.0, "in x") if single else (255.0, "/255")
    space = "the input's own units" if single else "[0,1] pixel space x 255"
    t = Table(
        Column("file", no_wrap=True),  # a file name must survive a narrow terminal whole
        "output f(x)" if single else "class",
        "margin",
        f"certified radius ({unit})",
        f"attacked radius ({unit})",
        title=f"model {answer.get('model_id')}: l2 radii in {space} "
        f"(bound: gamma={bound.get('gamma')}, {bound.get('kind')})"
        + ("" if bound.get("used") is not None else " NO CERTIFICATE: the verified bound is not a finite number"),
    )
    for r in results:
        name = names[r["index"]] if r["index"] < len(names) else str(r["index"])
        attacked = r.get("attack_radius_pixel")
        t.add_row(
            name,
            _output(r, single),
            fmt(r.get("margin"), 4),
            fmt(scale * r["radius_pixel"], 3),
            "-" if attacked is None else fmt(scale * attacked, 3),
        )
    return t


def _output(r: dict[str, Any], single: bool) -> str:
    """The class, or a regression's value and the side of its threshold (f -/+ margin) it is on."""
    if not single:
        return f"{r['predicted']} {r['class_name']}" if r.get("class_name") else str(r["predicted"])
    f, margin = r["logits"][0], r.get("margin") or 0.0
    above = r["predicted"] == 1
    return f"{fmt(f, 4)} ({'>' if above else '<='} {fmt(f - margin if above else f + margin, 2)})"
