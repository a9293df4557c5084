"""The reports of `lbdn paper report`, one per preset kind (table1, fig4, fig5, table2, table3):
each turns the runs of a sweep into Markdown lines and PNG figures (matplotlib; the caller picks
the Agg backend). Accuracies are in %, radii eps in 1/255 units of [0, 1] pixel space.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.results import (
    COLOURS,
    EPS,
    PAPER_NAME,
    Record,
    cell,
    gamma_label,
    group,
    group_flag,
    healthy,
    layers_in_order,
    mean,
    mean_acc,
    num,
)

Preset = dict[str, Any]
Kind = Callable[[Preset, list[Record], Path], tuple[list[str], list[Path]]]
XS = [0] + [int(e) for e in EPS]  # the x axis of accuracy-vs-radius plots: clean, then each eps


# ---- figure helpers -------------------------------------------------------------------------
def _save(fig: Any, png: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [png]


def _legend(fig: Any, axes: Any) -> None:
    """One legend for all panels (a line may appear in some panels only), outside on the right."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


def _curve(acc: dict[str, Any], key: str) -> list[Any]:
    """Clean accuracy, then `key` (cert or aa) accuracy at each eps: a line over XS."""
    return [acc["clean"]] + [acc[f"{key}_{e}"] for e in EPS]


def _radius_panels(n: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A row of n accuracy-vs-radius panels sharing the y axis (figsize in inches)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=figsize, sharey=True, squeeze=False)
    return fig, axes[0]


def _finish_radius_panels(fig: Any, axes: Any, titles: list[str], suptitle: str) -> None:
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("eps (l2, x/255)")
        ax.set_xticks(XS)
    axes[0].set_ylabel("accuracy (%)")
    _legend(fig, axes)
    fig.suptitle(suptitle, fontsize=10)


def _hatched(ax: Any, xs: list[float], heights: list[Any]) -> None:
    """The paper's bars: white, hatched, beside ours."""
    ax.bar(xs, heights, 0.4, label="paper", color="white", edgecolor="black", hatch="//")


# ---- table 1: Lipschitz tightness -----------------------------------------------------------
def table1(preset: Preset, records: list[Record], out: Path) -> tuple[list[str], list[Path]]:
    import matplotlib.pyplot as plt

    paper = (preset.get("published") or {}).get("tightness", {})
    groups = group(records, "layer", "gamma")
    gammas = sorted({float(g) for _, g in groups} | {float(g) for row in paper.values() for g in row})
    layers = layers_in_order([layer for layer, _ in groups] + list(paper))
    ours = {
        (layer, g): mean(
            100 * r["train"]["tightness"] for r in healthy(recs) if r["train"].get("tightness") is not None
        )
        for (layer, g), recs in groups.items()
    }
    lines = [
        "Lipschitz tightness in % (empirical lower bound / gamma): ours (paper).",
        "",
        "| layer | " + " | ".join(f"gamma {gamma_label(g)}" for g in gammas) + " |",
        "|---|" + "---|" * len(gammas),
    ]
    for layer in layers:
        # two decimals: a tightness of 99.96 % must not print as 100.0 (it is a lower bound / gamma <= 1)
        cells = [
            cell(ours.get((layer, g)), paper.get(layer, {}).get(gamma_label(g)), groups.get((layer, g), []), 2)
            for g in gammas
        ]
        lines.append(f"| {PAPER_NAME.get(layer, layer)} | " + " | ".join(cells) + " |")
    fig, axes = plt.subplots(1, len(gammas), figsize=(4 * len(gammas), 3.6), sharey=True, squeeze=False)
    xs = range(len(layers))
    for ax, g in zip(axes[0], gammas):
        colours = [COLOURS.get(layer, "k") for layer in layers]
        ax.bar([x - 0.2 for x in xs], [ours.get((layer, g)) or 0 for layer in layers], 0.4, label="ours", color=colours)
        _hatched(ax, [x + 0.2 for x in xs], [paper.get(layer, {}).get(gamma_label(g)) or 0 for layer in layers])
        ax.set_xticks(list(xs), [PAPER_NAME.get(layer, layer).split(" ")[0] for layer in layers])
        ax.set_title(f"gamma = {gamma_label(g)}")
        ax.set_ylim(0, 105)
    axes[0][0].set_ylabel("tightness (%)")
    _legend(fig, axes[0][:1])
    fig.suptitle("Table 1: Lipschitz tightness, ours (filled) vs paper (hatched)")
    return lines, _save(fig, out / "table1.png")


# ---- figure 4: clean, certified and attacked accuracy per gamma -----------------------------
def fig4(preset: Preset, records: list[Record], out: Path) -> tuple[list[str], list[Path]]:
    groups = group(records, "layer", "gamma")
    gammas = sorted({float(g) for _, g in groups if g is not None})
    layers = layers_in_order([layer for layer, _ in groups])
    acc = {k: mean_acc(v) for k, v in groups.items()}
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
        recs = groups[(layer, g)]
        lines.append(
            f"| {PAPER_NAME.get(layer, layer)} | {'-' if g is None else gamma_label(g)} | "
            + f"{cell(a['clean'], None, recs)} | "
            + " | ".join(num(a[f"cert_{e}"]) for e in EPS)
            + " | "
            + " | ".join(num(a[f"aa_{e}"]) for e in EPS)
            + " |"
        )
    cols = gammas or [None]
    fig, axes = _radius_panels(len(cols), (max(6.0, 4.2 * len(cols)), 3.8))
    for ax, g in zip(axes, cols):
        for layer in layers:
            a = acc.get((layer, g)) or acc.get((layer, None)) if layer == "Plain" else acc.get((layer, g))
            if not a:
                continue
            c = COLOURS.get(layer, "k")
            ax.plot(XS, _curve(a, "aa"), "-o", color=c, label=f"{PAPER_NAME.get(layer, layer)}")
            if layer != "Plain":
                ax.plot(XS, _curve(a, "cert"), "--", color=c)
    titles = ["gamma = -" if g is None else f"gamma = {gamma_label(g)}" for g in cols]
    _finish_radius_panels(fig, axes, titles, f"{preset['title']}\nsolid: empirical (AutoAttack), dashed: certified")
    return lines, _save(fig, out / f"{preset['name']}.png")


# ---- figure 5: test accuracy over epochs, mean and spread over seeds ------------------------
def _by_epoch(recs: list[Record]) -> dict[int, list[float]]:
    """Each epoch's test accuracies over the runs that recorded one."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        for row in r["history"]:
            if row.get("test_acc") is not None:
                by_epoch[int(row["epoch"])].append(float(row["test_acc"]))
    return by_epoch


def fig5(preset: Preset, records: list[Record], out: Path) -> tuple[list[str], list[Path]]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = group(records, "layer")
    lines = [
        "Test accuracy in % after the last epoch: mean ± std over seeds (n runs).",
        "",
        "| layer | test accuracy | runs |",
        "|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in layers_in_order([k[0] for k in groups]):
        recs = groups[(layer,)]
        finals = [r["train"].get("test_acc") for r in healthy(recs) if r["train"].get("test_acc") is not None]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        spread = "" if group_flag(recs) else f" ± {sd:.1f}"
        lines.append(f"| {PAPER_NAME.get(layer, layer)} | {cell(mean(finals), None, recs)}{spread} | {len(recs)} |")
        by_epoch = _by_epoch(healthy(recs))
        if not by_epoch:
            continue
        ep = sorted(by_epoch)
        mu = [statistics.fmean(by_epoch[e]) for e in ep]
        std = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in ep]
        c = COLOURS.get(layer, "k")
        ax.plot(ep, mu, color=c, label=PAPER_NAME.get(layer, layer))
        ax.fill_between(ep, [m - s for m, s in zip(mu, std)], [m + s for m, s in zip(mu, std)], color=c, alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(preset["title"], fontsize=9)
    ax.legend(fontsize=8)
    return lines, _save(fig, out / f"{preset['name']}.png")


# ---- table 2: clean and attacked accuracy per model scale -----------------------------------
def table2(preset: Preset, records: list[Record], out: Path) -> tuple[list[str], list[Path]]:
    paper = (preset.get("published") or {}).get("table2", {})
    groups = group(records, "layer", "scale")
    acc = {k: mean_acc(v) for k, v in groups.items()}
    layers = layers_in_order([k[0] for k in groups] + list(paper))
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
            recs = groups.get((layer, s), [])
            cells = [cell(a.get("clean"), p.get("clean"), recs)] + [
                cell(a.get(f"aa_{e}"), p.get(f"aa_{e}"), recs) for e in EPS
            ]
            runs = len(recs)
            lines.append(f"| {PAPER_NAME.get(layer, layer)} | {s} | {runs} | " + " | ".join(cells) + " |")
    fig, axes = _radius_panels(len(scales), (4.2 * len(scales), 3.6))
    for ax, s in zip(axes, scales):
        for layer in layers:
            c, name = COLOURS.get(layer, "k"), PAPER_NAME.get(layer, layer)
            a, p = acc.get((layer, s)), paper.get(layer, {}).get(s)
            if a:
                ax.plot(XS, _curve(a, "aa"), "-o", color=c, label=f"{name} ours")
            if p:
                ax.plot(XS, _curve(p, "aa"), ":", color=c, label=f"{name} paper")
    titles = [f"scale {s}" for s in scales]
    _finish_radius_panels(fig, axes, titles, f"{preset['title']}\nsolid: ours (AutoAttack), dotted: paper")
    return lines, _save(fig, out / f"{preset['name']}.png")


# ---- table 3: the DNN's clean and certified accuracy beside other methods -------------------
def table3(preset: Preset, records: list[Record], out: Path) -> tuple[list[str], list[Path]]:
    import matplotlib.pyplot as plt

    paper = (preset.get("published") or {}).get("table3", {})
    mine = mean_acc(records) if records else {}
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
                f"| {name} | {len(records)} | {cell(mine.get('clean'), p['clean'], records)} | "
                f"{cell(mine.get('cert_36'), p['cert_36'], records)} |"
            )
        else:
            lines.append(f"| {name} (paper only) | 0 | - ({num(p['clean'])}) | - ({num(p['cert_36'])}) |")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    p = paper.get(label, {})
    ax.bar([-0.2, 0.8], [mine.get("clean") or 0, mine.get("cert_36") or 0], 0.4, label="ours", color="tab:red")
    _hatched(ax, [0.2, 1.2], [p.get("clean", 0), p.get("cert_36", 0)])
    ax.set_xticks([0, 1], ["clean", "certified 36/255"])
    ax.set_ylabel("accuracy (%)")
    ax.set_title(preset["title"], fontsize=9)
    ax.legend()
    return lines, _save(fig, out / f"{preset['name']}.png")


KINDS: dict[str, Kind] = {"table1": table1, "fig4": fig4, "fig5": fig5, "table2": table2, "table3": table3}
