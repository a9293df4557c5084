"""`lbdn paper report`: a preset's table or figure from a sweep's finished jobs, our numbers beside
the paper's, as Markdown (report.md) and PNG plots (matplotlib, Agg: no display needed).

Accuracies are in %, radii eps in 1/255 units of [0, 1] pixel space (the paper's). Jobs of the
same grid point that differ only in seed are averaged (and their spread shown where the paper does).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.table import Table

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


# ---- collecting results ---------------------------------------------------------------------
def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(ours: float | None, paper: float | None, digits: int = 1) -> str:
    return f"{_f(ours, digits)} ({_f(paper)})" if paper is not None else _f(ours, digits)


def runs(sweep: dict[str, Any]) -> list[dict[str, Any]]:
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


def _group(records: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(r["spec"].get(k) for k in keys)].append(r)
    return groups


def _accuracies(rec: dict[str, Any]) -> dict[str, float | None]:
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


def _mean_acc(recs: list[dict[str, Any]]) -> dict[str, float | None]:
    accs = [_accuracies(r) for r in recs]
    return {k: _mean(a[k] for a in accs) for k in (accs[0] if accs else {})}


def _layers(keys: Iterable[str | None]) -> list[str]:
    present = {k for k in keys if k}
    return [x for x in LAYER_ORDER if x in present] + sorted(present - set(LAYER_ORDER))


def _legend(fig: Any, axes: Any) -> None:
    """One legend for all panels (a line may appear in some panels only), outside on the right."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


def _gamma_label(g: Any) -> str:
    return f"{float(g):g}"


# ---- the reports ----------------------------------------------------------------------------
def write_report(preset: dict[str, Any], sweep: dict[str, Any], out: Path) -> list[Path]:
    """Write out/report.md and out/*.png for the preset's kind; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    out.mkdir(parents=True, exist_ok=True)
    records = runs(sweep)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(sweep["counts"].items()))
    head = [
        f"# {preset['title']}",
        "",
        f"Sweep `{sweep['id']}` ({sweep['status']}: {counts}); {len(records)} trained models used.",
    ]
    if preset.get("note"):
        head += ["", preset["note"]]
    kind = preset["kind"]
    body, pngs = {"table1": _table1, "fig4": _fig4, "fig5": _fig5, "table2": _table2, "table3": _table3}[kind](
        preset, records, out
    )
    md = out / "report.md"
    md.write_text("\n".join(head + [""] + body + [""] + [f"![{p.stem}]({p.name})" for p in pngs]) + "\n")
    return [md, *pngs]


def _table1(preset: dict[str, Any], records: list[dict[str, Any]], out: Path) -> tuple[list[str], list[Path]]:
    import matplotlib.pyplot as plt

    paper = (preset.get("published") or {}).get("tightness", {})
    groups = _group(records, "layer", "gamma")
    gammas = sorted({float(g) for _, g in groups} | {float(g) for row in paper.values() for g in row})
    layers = _layers([layer for layer, _ in groups] + list(paper))
    ours = {
        (layer, g): _mean(100 * r["train"]["tightness"] for r in recs if r["train"].get("tightness") is not None)
        for (layer, g), recs in groups.items()
    }
    lines = [
        "Lipschitz tightness in % (empirical lower bound / gamma): ours (paper).",
        "",
        "| layer | " + " | ".join(f"gamma {_gamma_label(g)}" for g in gammas) + " |",
        "|---|" + "---|" * len(gammas),
    ]
    for layer in layers:
        # two decimals: a tightness of 99.96 % must not print as 100.0 (it is a lower bound / gamma <= 1)
        cells = [_pair(ours.get((layer, g)), paper.get(layer, {}).get(_gamma_label(g)), 2) for g in gammas]
        lines.append(f"| {PAPER_NAME.get(layer, layer)} | " + " | ".join(cells) + " |")
    fig, axes = plt.subplots(1, len(gammas), figsize=(4 * len(gammas), 3.6), sharey=True, squeeze=False)
    for ax, g in zip(axes[0], gammas):
        xs = range(len(layers))
        ax.bar(
            [x - 0.2 for x in xs],
            [ours.get((layer, g)) or 0 for layer in layers],
            0.4,
            label="ours",
            color=[COLOURS.get(layer, "k") for layer in layers],
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [paper.get(layer, {}).get(_gamma_label(g)) or 0 for layer in layers],
            0.4,
            label="paper",
            color="white",
            edgecolor="black",
            hatch="//",
        )
        ax.set_xticks(list(xs), [PAPER_NAME.get(layer, layer).split(" ")[0] for layer in layers])
        ax.set_title(f"gamma = {_gamma_label(g)}")
        ax.set_ylim(0, 105)
    axes[0][0].set_ylabel("tightness (%)")
    _legend(fig, axes[0][:1])
    fig.suptitle("Table 1: Lipschitz tightness, ours (filled) vs paper (hatched)")
    fig.tight_layout()
    png = out / "table1.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return lines, [png]


def _fig4(preset: dict[str, Any], records: list[dict[str, Any]], out: Path) -> tuple[list[str], list[Path]]:
    import matplotlib.pyplot as plt

    groups = _group(records, "layer", "gamma")
    gammas = sorted({float(g) for _, g in groups if g is not None})
    layers = _layers([layer for layer, _ in groups])
    acc = {k: _mean_acc(v) for k, v in groups.items()}
    lines = [
        (
            "Accuracy in % at l2 radius eps (1/255, pixel space): clean, certified, and empirical "
            "(AutoAttack) robust accuracy. Plain networks have no certificate."
        ),
        "",
        "| layer | gamma | clean | cert 36 | cert 72 | cert 108 | AA 36 | AA 72 | AA 108 |",
        "|---|---|" + "---|" * 7,
    ]
    order = {layer: i for i, layer in enumerate(layers)}
    for (layer, g), a in sorted(acc.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] or 0)):
        lines.append(
            f"| {PAPER_NAME.get(layer, layer)} | {'-' if g is None else _gamma_label(g)} | {_f(a['clean'])} | "
            + " | ".join(_f(a[f"cert_{e}"]) for e in EPS)
            + " | "
            + " | ".join(_f(a[f"aa_{e}"]) for e in EPS)
            + " |"
        )
    cols = gammas or [None]
    fig, axes = plt.subplots(1, len(cols), figsize=(max(6.0, 4.2 * len(cols)), 3.8), sharey=True, squeeze=False)
    xs = [0] + [int(e) for e in EPS]
    for ax, g in zip(axes[0], cols):
        for layer in layers:
            a = acc.get((layer, g)) or acc.get((layer, None)) if layer == "Plain" else acc.get((layer, g))
            if not a:
                continue
            c = COLOURS.get(layer, "k")
            ax.plot(
                xs, [a["clean"]] + [a[f"aa_{e}"] for e in EPS], "-o", color=c, label=f"{PAPER_NAME.get(layer, layer)}"
            )
            if layer != "Plain":
                ax.plot(xs, [a["clean"]] + [a[f"cert_{e}"] for e in EPS], "--", color=c)
        ax.set_title("gamma = -" if g is None else f"gamma = {_gamma_label(g)}")
        ax.set_xlabel("eps (l2, x/255)")
        ax.set_xticks(xs)
    axes[0][0].set_ylabel("accuracy (%)")
    _legend(fig, axes[0])
    fig.suptitle(f"{preset['title']}\nsolid: empirical (AutoAttack), dashed: certified", fontsize=10)
    fig.tight_layout()
    png = out / f"{preset['name']}.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return lines, [png]


def _fig5(preset: dict[str, Any], records: list[dict[str, Any]], out: Path) -> tuple[list[str], list[Path]]:
    import matplotlib.pyplot as plt

    groups = _group(records, "layer")
    layers = _layers([k[0] for k in groups])
    lines = [
        "Test accuracy in % after the last epoch: mean ± std over seeds (n runs).",
        "",
        "| layer | test accuracy | runs |",
        "|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in layers:
        recs = groups[(layer,)]
        finals = [r["train"].get("test_acc") for r in recs if r["train"].get("test_acc") is not None]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        lines.append(f"| {PAPER_NAME.get(layer, layer)} | {_f(_mean(finals))} ± {sd:.1f} | {len(recs)} |")
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for r in recs:
            for row in r["history"]:
                if row.get("test_acc") is not None:
                    by_epoch[int(row["epoch"])].append(float(row["test_acc"]))
        if not by_epoch:
            continue
        ep = sorted(by_epoch)
        mean = [statistics.fmean(by_epoch[e]) for e in ep]
        std = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in ep]
        c = COLOURS.get(layer, "k")
        ax.plot(ep, mean, color=c, label=PAPER_NAME.get(layer, layer))
        ax.fill_between(ep, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=c, alpha=0.2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(preset["title"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / f"{preset['name']}.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return lines, [png]


def _table2(preset: dict[str, Any], records: list[dict[str, Any]], out: Path) -> tuple[list[str], list[Path]]:
    import matplotlib.pyplot as plt

    paper = (preset.get("published") or {}).get("table2", {})
    groups = _group(records, "layer", "scale")
    acc = {k: _mean_acc(v) for k, v in groups.items()}
    n = {k: len(v) for k, v in groups.items()}
    layers = _layers([k[0] for k in groups] + list(paper))
    scales = [
        s
        for s in ("small", "medium", "large")
        if any(k[1] == s for k in groups) or any(s in row for row in paper.values())
    ]
    lines = [
        "Clean and AutoAttack (l2) accuracy in % at eps 36/72/108 (/255), mean over seeds: ours (paper).",
        "",
        "| layer | scale | runs | clean | AA 36 | AA 72 | AA 108 |",
        "|---|---|---|---|---|---|---|",
    ]
    for layer in layers:
        for s in scales:
            a, p = acc.get((layer, s), {}), paper.get(layer, {}).get(s, {})
            if not a and not p:
                continue
            cells = [_pair(a.get("clean"), p.get("clean"))] + [_pair(a.get(f"aa_{e}"), p.get(f"aa_{e}")) for e in EPS]
            lines.append(
                f"| {PAPER_NAME.get(layer, layer)} | {s} | {n.get((layer, s), 0)} | " + " | ".join(cells) + " |"
            )
    fig, axes = plt.subplots(1, len(scales), figsize=(4.2 * len(scales), 3.6), sharey=True, squeeze=False)
    xs = [0] + [int(e) for e in EPS]
    for ax, s in zip(axes[0], scales):
        for layer in layers:
            c = COLOURS.get(layer, "k")
            a, p = acc.get((layer, s)), paper.get(layer, {}).get(s)
            if a:
                ax.plot(
                    xs,
                    [a["clean"]] + [a[f"aa_{e}"] for e in EPS],
                    "-o",
                    color=c,
                    label=f"{PAPER_NAME.get(layer, layer)} ours",
                )
            if p:
                ax.plot(
                    xs,
                    [p["clean"]] + [p[f"aa_{e}"] for e in EPS],
                    ":",
                    color=c,
                    label=f"{PAPER_NAME.get(layer, layer)} paper",
                )
        ax.set_title(f"scale {s}")
        ax.set_xlabel("eps (l2, x/255)")
        ax.set_xticks(xs)
    axes[0][0].set_ylabel("accuracy (%)")
    _legend(fig, axes[0])
    fig.suptitle(f"{preset['title']}\nsolid: ours (AutoAttack), dotted: paper", fontsize=10)
    fig.tight_layout()
    png = out / f"{preset['name']}.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return lines, [png]


def _table3(preset: dict[str, Any], records: list[dict[str, Any]], out: Path) -> tuple[list[str], list[Path]]:
    import matplotlib.pyplot as plt

    paper = (preset.get("published") or {}).get("table3", {})
    mine = _mean_acc(records) if records else {}
    label = "Sandwich (DNN)"
    lines = [
        "Clean and certified accuracy at 36/255 (l2, pixel space) in %, mean over seeds: ours (paper).",
        "",
        "| model | runs | clean | certified 36 |",
        "|---|---|---|---|",
    ]
    for name, p in paper.items():
        if name == label:
            lines.append(
                f"| {name} | {len(records)} | {_pair(mine.get('clean'), p['clean'])} | "
                f"{_pair(mine.get('cert_36'), p['cert_36'])} |"
            )
        else:
            lines.append(f"| {name} (paper only) | 0 | - ({_f(p['clean'])}) | - ({_f(p['cert_36'])}) |")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    p = paper.get(label, {})
    ax.bar([-0.2, 0.8], [mine.get("clean") or 0, mine.get("cert_36") or 0], 0.4, label="ours", color="tab:red")
    ax.bar(
        [0.2, 1.2],
        [p.get("clean", 0), p.get("cert_36", 0)],
        0.4,
        label="paper",
        color="white",
        edgecolor="black",
        hatch="//",
    )
    ax.set_xticks([0, 1], ["clean", "certified 36/255"])
    ax.set_ylabel("accuracy (%)")
    ax.set_title(preset["title"], fontsize=9)
    ax.legend()
    fig.tight_layout()
    png = out / f"{preset['name']}.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return lines, [png]
