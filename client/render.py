"""Text of jobs, models and certificates for the terminal (rich tables and plain lines)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Column, Table


def fmt(value: Any, digits: int = 2) -> str:
    """A number with `digits` decimals; '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# spec fields that only training sets: an import never ran, so its spec's defaults for them mean nothing
TRAINING_ONLY = (
    "epochs",
    "seed",
    "lr",
    "loss",
    "train_batch_size",
    "test_batch_size",
    "compile",
    "precision",
    "cert_acc",
)


def describe(spec: dict[str, Any], trained: bool = True) -> str:
    """KWL-Sandwich-small g=1 cifar10 100ep (`trained` False: no epochs, as for an import)."""
    if not spec:
        return "-"
    gamma = spec.get("gamma")
    g = f" g={gamma:g}" if isinstance(gamma, (int, float)) else ""
    lln = "-LLN" if spec.get("lln") else ""
    epochs = f" {spec.get('epochs')}ep" if trained and spec.get("epochs") is not None else ""
    return f"{spec.get('model')}-{spec.get('layer')}-{spec.get('scale')}{lln}{g} {spec.get('dataset')}{epochs}"


def what_of(job: dict[str, Any]) -> str:
    """What a job is, in a few words: its training run, the model it evaluates, or the file it imported."""
    spec = job.get("spec") or {}
    if job["kind"] == "evaluate":
        return f"evaluate {job.get('model_id') or '(model deleted)'}"
    if job["kind"] == "import":
        source = (job.get("result") or {}).get("file")
        return f"import {describe(spec, trained=False)}" + (f" from {source}" if source else "")
    return describe(spec)


def _when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%m-%d %H:%M")


def _progress(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    return f"ep {p['epoch']}/{p['epochs']}" if p and job["status"] == "running" else ""


def jobs_table(items: list[dict[str, Any]]) -> Table:
    """One row per job. At 80 columns (a pipe, a small terminal) the id, status, progress and
    created columns keep their whole text; only the run's description folds onto more lines."""
    t = Table(box=box.SIMPLE, pad_edge=False)
    t.add_column("job", no_wrap=True, min_width=24)
    t.add_column("status", no_wrap=True, min_width=9)
    t.add_column("progress", no_wrap=True)
    t.add_column("run", overflow="fold", ratio=1)
    t.add_column("created", no_wrap=True, min_width=11)
    for j in items:
        run = what_of(j)
        if j.get("name"):
            run = f"{j['name']}: {run}"
        if j.get("tags"):
            run += " [" + ", ".join(j["tags"]) + "]"
        run = escape(run)  # a user's name or tag is text, never rich markup
        t.add_row(j["id"], j["status"], _progress(j), run, _when(j.get("created_at")))
    return t


def epoch_table(row: dict[str, Any]) -> Table:
    """One epoch's metrics as a two-column table (metric, value), in the order they were recorded."""
    t = Table("metric", "value", box=box.SIMPLE, title=f"epoch {row.get('epoch', '?')}", title_justify="left")
    for key, value in row.items():
        if key != "epoch":
            t.add_row(key, fmt(value, 4) if isinstance(value, float) else str(value))
    return t


def _duration(job: dict[str, Any]) -> str:
    a, b = job.get("started_at"), job.get("finished_at")
    if not (a and b):
        return ""
    s = int((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds())
    return f" in {s // 60}m{s % 60:02d}s"


def summary_lines(job: dict[str, Any]) -> list[str]:
    """What a finished (or running) job amounts to, a few lines."""
    lines = [f"job {job['id']} {job['status']}{_duration(job)}: {what_of(job)}"]
    if job.get("name") or job.get("tags"):
        tags = " [" + ", ".join(job.get("tags") or []) + "]" if job.get("tags") else ""
        lines.append(escape(f"  name: {job.get('name') or '-'}{tags}"))
    if job.get("sweep_id"):
        lines.append(f"  sweep: {job['sweep_id']} (lbdn sweeps {job['sweep_id']})")
    if job.get("note"):
        lines.append(escape(f"  note: {job['note']}"))
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
    if job["status"] == "succeeded" and job["kind"] in ("train", "import"):
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


# final metrics worth a column, in this order (cert_acc_* by radius, then these)
METRICS = ("test_acc", "test_loss", "tightness", "lipschitz_lower_bound", "clean_acc")


def final_metrics(job: dict[str, Any]) -> dict[str, Any]:
    """A job's final numbers: its summary's (`result`) over its latest epoch's, top-level numbers only."""
    merged = {**(job.get("metrics") or {}), **(job.get("result") or {})}
    return {k: v for k, v in merged.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The metric columns a set of final-metric dicts fills: certified accuracies by radius first."""
    keys = {k for r in rows for k in r}
    certs = sorted((k for k in keys if k.startswith("cert_acc_")), key=lambda k: int(k.rsplit("_", 1)[1] or 0))
    return certs + [k for k in METRICS if k in keys]


def differing(specs: list[dict[str, Any]]) -> list[str]:
    """The spec fields whose values are not the same in every spec, in the first spec's order."""
    keys = list(dict.fromkeys(k for s in specs for k in s))
    return [k for k in keys if len({repr(s.get(k)) for s in specs}) > 1]


def compare_table(jobs: list[dict[str, Any]]) -> Table:
    """Runs x (spec fields that differ + final metrics), one row per job in the order given."""
    specs = [j.get("spec") or {} for j in jobs]
    fields = differing(specs)
    finals = [final_metrics(j) for j in jobs]
    metrics = metric_columns(finals)
    same = {k: v for k, v in specs[0].items() if k not in fields} if specs else {}
    title = "same in all: " + (describe(same) if same.get("model") else "-")
    t = Table(box=box.SIMPLE, title=title, title_justify="left")
    t.add_column("job", no_wrap=True)
    t.add_column("name", overflow="fold")
    t.add_column("status", no_wrap=True)
    for column in fields + metrics:
        t.add_column(column.replace("cert_acc_", "cert@"), justify="right")
    for j, spec, final in zip(jobs, specs, finals, strict=True):
        cells = [fmt(spec.get(k), 4) for k in fields] + [fmt(final.get(k), 2) for k in metrics]
        t.add_row(j["id"], escape(j.get("name") or "-"), j["status"], *cells)
    return t


def sweep_results_table(sw: dict[str, Any]) -> Table:
    """A sweep's jobs: grid point, status, progress and final metrics (training and evaluation)."""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(sw["counts"].items()))
    jobs = sw.get("jobs") or []
    finals = [final_metrics({"result": j.get("result")}) for j in jobs]
    metrics = metric_columns(finals)
    t = Table(box=box.SIMPLE, title=f"sweep {sw['id']} ({sw['name']}): {sw['status']}, {counts}", title_justify="left")
    t.add_column("job", no_wrap=True)
    t.add_column("role", no_wrap=True)
    t.add_column("point", overflow="fold")
    t.add_column("status", no_wrap=True)
    t.add_column("progress", no_wrap=True)
    for column in metrics:
        t.add_column(column.replace("cert_acc_", "cert@"), justify="right")
    for j, final in zip(jobs, finals, strict=True):
        point = " ".join(f"{k}={v}" for k, v in sorted((j.get("point") or {}).items()) if v is not None)
        t.add_row(
            j["job_id"], j["role"], point or "-", j["status"], _progress(j), *(fmt(final.get(k), 2) for k in metrics)
        )
    return t


def _output(r: dict[str, Any], single: bool) -> str:
    """The class, or a regression's value and the side of its threshold (f -/+ margin) it is on."""
    if not single:
        return f"{r['predicted']} {r['class_name']}" if r.get("class_name") else str(r["predicted"])
    f, margin = r["logits"][0], r.get("margin") or 0.0
    above = r["predicted"] == 1
    return f"{fmt(f, 4)} ({'>' if above else '<='} {fmt(f - margin if above else f + margin, 2)})"
