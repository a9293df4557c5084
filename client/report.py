"""`lbdn paper report`: a preset's table or figure from a sweep's finished jobs, our numbers beside
the paper's, as Markdown (report.md) and PNG plots (matplotlib, Agg: no display needed); and the
terminal tables of presets and sweeps.

Accuracies are in %, radii eps in 1/255 units of [0, 1] pixel space (the paper's). Jobs of the
same grid point that differ only in seed are averaged (and their spread shown where the paper does).
The records are collected in client.results, each preset kind's report is in client.report_kinds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from client.results import budget, runs


def presets_table(items: list[dict[str, Any]]) -> Table:
    t = Table("preset", "jobs", "evaluated", "what")
    for p in items:
        t.add_row(p["name"], str(p["jobs"]), "yes" if p["evaluate"] else "no", p["title"])
    return t


def sweep_table(sw: dict[str, Any]) -> Table:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(sw["counts"].items()))
    from client.render import describe

    t = Table(
        "job",
        "role",
        "experiment",
        "status",
        "progress",
        title=f"sweep {sw['id']} ({sw['name']}): {sw['status']}, {counts}",
    )
    for j in sw.get("jobs") or []:
        p = j.get("progress") or {}
        prog = f"epoch {p['epoch']}/{p['epochs']}" if p and j["status"] == "running" else ""
        what = describe(j["spec"]) if j.get("spec") else f"of {j.get('train_job_id')}"
        t.add_row(j["job_id"], j["role"], what, j["status"], prog)
    return t


def write_report(preset: dict[str, Any], sweep: dict[str, Any], out: Path) -> list[Path]:
    """Write out/report.md and out/*.png for the preset's kind; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from client.report_kinds import KINDS

    out.mkdir(parents=True, exist_ok=True)
    records = runs(sweep)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(sweep["counts"].items()))
    spent, short = budget(preset, sweep)
    head = [
        f"# {preset['title']}",
        "",
        f"Sweep `{sweep['id']}` ({sweep['status']}: {counts}); {len(records)} trained models used.",
        "",
        f"**Budget: {spent}.**"
        + (" A shorter budget than the paper's: expect lower numbers than its column." if short else ""),
    ]
    if preset.get("note"):
        head += ["", preset["note"]]
    body, pngs = KINDS[preset["kind"]](preset, records, out)
    md = out / "report.md"
    tail = [""] + problems(records, sweep) + [f"![{p.stem}]({p.name})" for p in pngs]
    md.write_text("\n".join(head + [""] + body + tail) + "\n")
    return [md, *pngs]


def problems(records: list[dict[str, Any]], sweep: dict[str, Any]) -> list[str]:
    """Markdown lines naming each run left out of the tables (collapsed, diverged, at chance, failed)."""
    from client.render import describe

    def what(spec: dict[str, Any]) -> str:
        return f"{describe(spec)} seed {spec.get('seed', '-')}"

    lines = [f"- `{r['job_id']}` {what(r['spec'])}: **{r['flag']}**" for r in records if r["flag"]]
    for j in sweep.get("jobs") or []:
        if j["role"] == "train" and j["status"] == "failed":
            err = (j.get("error") or "").splitlines()[0:1] or ["no error message"]
            kind = "diverged" if "nan" in err[0].lower() or "infinite" in err[0].lower() else "failed"
            lines.append(f"- `{j['job_id']}` {what(j.get('spec') or {})}: **{kind}** ({err[0][:160]})")
    if not lines:
        return []
    head = (
        "Runs left out of the numbers above (collapsed: constant output, tightness 0; diverged: NaN or "
        "infinite values; chance accuracy: learnt nothing). A cell marked `*` averages the other runs."
    )
    return [head, "", *lines, ""]
