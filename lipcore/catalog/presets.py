"""The paper's experiments as presets, and the numbers it published, as plain data.

Each preset is one block of the paper's README commands (Wang & Manchester, ICML 2023; our copy is
`../shared/paper-commands.txt`): a list of lines, each a base ExperimentSpec (as a dict) and a grid
over gamma / layer / scale / seed. `expand` turns a line into the specs of its jobs. The published
values are copied from the paper's tables (`../shared/paper-results.md`) because users of the
service do not have that file; figures (Fig. 4, Fig. 5) were published as plots only, so they have
no reference numbers here.

Only the standard library: the API process serves this module without importing torch.
The specs are plain dicts here; they become ExperimentSpecs where jobs are made (core.sweep_submit).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

GRID_KEYS = ("gamma", "layer", "scale", "seed")
PAPER_SEEDS5 = [123, 43, 13, 7, 365]
PAPER_SEEDS3 = [123, 43, 13]
PAPER_EPS = [36, 72, 108]  # l2 radii in 1/255 units, [0, 1] pixel space


@dataclass(frozen=True)
class Line:
    """One command of the paper: fixed ExperimentSpec fields and a grid of values to sweep."""

    spec: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """A block of the paper's commands and what the report of it looks like.

    kind: table1 (Toy tightness), fig4 (accuracy vs eps per gamma), fig5 (test accuracy vs epoch
    over seeds), table2 (clean + AutoAttack), table3 (clean + certified at 36/255).
    evaluate: whether the paper also runs `--mode eval` (AutoAttack beside certificates) on each
    trained model; a sweep submits those evaluation jobs as its training jobs succeed.
    """

    name: str
    title: str
    kind: str
    lines: list[Line]
    evaluate: bool
    published: dict[str, Any] | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["jobs"] = len(self.specs())
        return d

    def specs(
        self, epochs: int | None = None, seeds: list[int] | None = None
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(spec fields, grid point) of every training job, with `epochs` / `seeds` overridden."""
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for line in self.lines:
            base = dict(line.spec)
            grid = dict(line.grid)
            if epochs is not None:
                base["epochs"] = epochs
            if seeds is not None:
                base.pop("seed", None)
                grid["seed"] = list(seeds)
            out.extend(expand(base, grid))
        return dedupe(out)


def expand(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every combination of the grid on top of `base`: [(spec fields, grid point)], grid order.

    Raises ValueError for a grid key other than gamma / layer / scale / seed or an empty value list.
    """
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise ValueError(f"grid: unknown keys {sorted(unknown)}; expected some of {list(GRID_KEYS)}")
    keys = [k for k in GRID_KEYS if k in grid]
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ValueError(f"grid.{k}: expected a non-empty list of values")
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        out.append(({**base, **point}, point))
    return out


def dedupe(items: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Drop repeated specs (e.g. a Plain line under a gamma grid: Plain has no gamma)."""
    seen, out = set(), []
    for spec, point in items:
        key = tuple(sorted((k, repr(v)) for k, v in spec.items()))
        if key not in seen:
            seen.add(key)
            out.append((spec, point))
    return out


def _toy(layer: str) -> Line:
    return Line(
        {"model": "Toy", "layer": layer, "scale": "small", "dataset": "square_wave", "epochs": 200},
        {"gamma": [1, 5, 10]},
    )


def _fig4(dataset: str, scale: str, loss: str, gammas: list[float]) -> list[Line]:
    base = {"model": "KWL", "scale": scale, "dataset": dataset, "loss": loss, "epochs": 100}
    lines = [Line({**base, "layer": layer}, {"gamma": gammas}) for layer in ("Sandwich", "Orthogon", "Aol")]
    lines.append(Line({**base, "layer": "Plain"}))
    lines.append(Line({**base, "model": "Resnet", "layer": "SLL"}, {"gamma": gammas}))
    return lines


def _fig5(dataset: str, scale: str, loss: str, gamma: float) -> list[Line]:
    base = {"model": "KWL", "scale": scale, "dataset": dataset, "loss": loss, "epochs": 100}
    seeds = {"seed": PAPER_SEEDS5}
    lines = [Line({**base, "layer": layer, "gamma": gamma}, seeds) for layer in ("Sandwich", "Orthogon", "Aol")]
    lines.append(Line({**base, "layer": "Plain"}, seeds))
    lines.append(Line({**base, "model": "Resnet", "layer": "SLL", "gamma": gamma}, seeds))
    return lines


def _table2(dataset: str) -> list[Line]:
    base = {"model": "KWL", "gamma": 2, "dataset": dataset, "loss": "xent", "epochs": 100, "normalized": True}
    grid: dict[str, list[Any]] = {"scale": ["small", "medium", "large"], "seed": PAPER_SEEDS3}
    lines = [Line({**base, "layer": layer}, grid) for layer in ("Sandwich", "Orthogon", "Aol")]
    lines.append(Line({**base, "model": "Resnet", "layer": "SLL"}, grid))
    return lines


def _table3(dataset: str) -> list[Line]:
    return [
        Line(
            {
                "model": "DNN",
                "layer": "Sandwich",
                "scale": "small",
                "gamma": 1,
                "dataset": dataset,
                "loss": "xent",
                "epochs": 400,
                "cert_acc": True,
            },
            {"seed": PAPER_SEEDS3},
        )
    ]


def _t2(clean: str, a36: str, a72: str, a108: str) -> dict[str, dict[str, float]]:
    """One row of Table 2 ('S / M / L' strings) -> {scale: {clean, aa_36, aa_72, aa_108}}."""
    cols = [[float(v) for v in s.split("/")] for s in (clean, a36, a72, a108)]
    scales = ("small", "medium", "large")[: len(cols[0])]
    return {sc: dict(zip(("clean", "aa_36", "aa_72", "aa_108"), (c[i] for c in cols))) for i, sc in enumerate(scales)}


# Table 1: Lipschitz tightness (empirical lower bound / gamma, %), by layer and gamma.
TABLE1 = {
    "Sandwich": {"1": 99.9, "5": 99.3, "10": 94.0},
    "SLL": {"1": 99.9, "5": 90.5, "10": 67.9},
    "Orthogon": {"1": 74.1, "5": 72.8, "10": 64.5},
    "Aol": {"1": 77.2, "5": 45.2, "10": 47.9},
}
# Table 2: clean and AutoAttack l2 accuracy (%) at eps 36/72/108 (/255), mean of 3 runs.
TABLE2 = {
    "cifar100": {
        "Aol": _t2("30.4 / 31.1 / 31.6", "25.1 / 25.9 / 26.5", "21.1 / 21.7 / 22.2", "17.6 / 18.2 / 18.7"),
        "Orthogon": _t2("48.7 / 51.1 / 52.2", "38.6 / 41.4 / 42.5", "30.6 / 33.0 / 34.3", "24.0 / 26.4 / 27.4"),
        "SLL": _t2("52.9 / 53.8 / 54.8", "41.9 / 43.1 / 44.0", "32.9 / 33.9 / 34.9", "25.5 / 26.6 / 27.6"),
        "Sandwich": _t2("54.2 / 56.5 / 57.5", "44.3 / 47.1 / 48.5", "35.5 / 38.6 / 40.2", "28.4 / 31.5 / 32.9"),
    },
    "tiny_imagenet": {
        "Aol": _t2("17.4 / 16.8", "15.1 / 14.6", "13.1 / 12.7", "11.3 / 11.0"),
        "Orthogon": _t2("29.7 / 30.9", "24.4 / 26.0", "20.1 / 21.5", "16.4 / 17.7"),
        "SLL": _t2("29.3 / 30.3", "23.5 / 24.6", "18.6 / 19.8", "14.7 / 15.7"),
        "Sandwich": _t2("34.7 / 35.0", "29.3 / 29.9", "24.6 / 25.3", "20.5 / 21.4"),
    },
}
# Table 3: clean and certified (36/255) accuracy (%), no input normalisation, LLN, gamma 1.
TABLE3 = {
    "cifar100": {
        "SLL Small": {"clean": 44.9, "cert_36": 34.7},
        "SLL X-Large": {"clean": 46.5, "cert_36": 36.5},
        "Sandwich (DNN)": {"clean": 46.3, "cert_36": 35.3},
    },
    "tiny_imagenet": {
        "SLL Small": {"clean": 26.6, "cert_36": 19.5},
        "SLL X-Large": {"clean": 32.1, "cert_36": 23.0},
        "Sandwich (DNN)": {"clean": 33.4, "cert_36": 24.7},
    },
}
FIGURE_NOTE = "The paper prints this as a figure, not as numbers: there is no published column to compare with."


_FIG4 = "certified and empirical robust accuracy vs eps"


def _figure(name: str, title: str, lines: list[Line]) -> Preset:
    """A figure's preset: Fig. 4 evaluates every model (AutoAttack beside certificates), Fig. 5 not."""
    kind = name.split("-")[0]
    return Preset(name, title, kind, lines, evaluate=kind == "fig4", note=FIGURE_NOTE)


def _table2_preset(dataset: str, suffix: str, title: str, note: str = "") -> Preset:
    return Preset(
        f"table2-{suffix}",
        f"Table 2: {title} clean and AutoAttack accuracy (%), gamma 2",
        "table2",
        _table2(dataset),
        evaluate=True,
        published={"table2": TABLE2[dataset]},
        note=note,
    )


def _table3_preset(dataset: str, suffix: str, title: str) -> Preset:
    return Preset(
        f"table3-{suffix}",
        f"Table 3: {title} certified accuracy at 36/255 (%), DNN, gamma 1",
        "table3",
        _table3(dataset),
        evaluate=True,
        published={"table3": TABLE3[dataset]},
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "table1",
            "Table 1: Lipschitz tightness of the Toy square-wave regression (%)",
            "table1",
            [_toy("Sandwich"), _toy("Orthogon"), _toy("Aol"), _toy("SLL")],
            evaluate=False,
            published={"tightness": TABLE1},
            note="Tightness = empirical Lipschitz lower bound / gamma, from each training job's summary.",
        ),
        _figure(
            "fig4-cifar10", "Fig. 4 (top): CIFAR-10, " + _FIG4, _fig4("cifar10", "small", "multimargin", [1, 10, 100])
        ),
        _figure("fig4-cifar100", "Fig. 4 (bottom): CIFAR-100, " + _FIG4, _fig4("cifar100", "large", "xent", [1, 2, 4])),
        _figure(
            "fig5-cifar10",
            "Fig. 5 (left): CIFAR-10 learning curves, gamma 100, 5 seeds",
            _fig5("cifar10", "small", "multimargin", 100),
        ),
        _figure(
            "fig5-cifar100",
            "Fig. 5 (right): CIFAR-100 learning curves, gamma 10, 5 seeds",
            _fig5("cifar100", "large", "xent", 10),
        ),
        _table2_preset("cifar100", "cifar100", "CIFAR-100"),
        _table2_preset(
            "tiny_imagenet",
            "tiny",
            "Tiny-ImageNet",
            note="The paper's README trains Tiny-ImageNet with gamma 2 (as here) while its Table 2 caption "
            "says gamma 1; the published column is the table's. It lists small and medium only.",
        ),
        _table3_preset("cifar100", "cifar100", "CIFAR-100"),
        _table3_preset("tiny_imagenet", "tiny", "Tiny-ImageNet"),
    )
}
