"""`lbdn sweeps` and `lbdn paper list | run | report`: the paper's experiments as sweeps of jobs."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from client.commands import command
from client.http import ApiError, Client
from client.ui import EXIT_DETACHED, EXIT_FAILED, EXIT_OK, Ui, UsageError


def _sweeps_args(sw: argparse.ArgumentParser) -> None:
    sw.add_argument("sweep", nargs="?", help="a sweep's id, or `create` or `cancel`")
    sw.add_argument("target", nargs="?", help="create: a JSON file of the POST /v1/sweeps body; cancel: the sweep")
    sw.add_argument("--limit", type=int, default=50)
    g = sw.add_argument_group("lbdn sweeps create (without a JSON file)")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a base spec field")
    g.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2", help="values to sweep over")
    g.add_argument("--name", default=None)
    g.add_argument("--tag", action="append", default=None, help="a tag of every job (repeat for more)")
    g.add_argument("--epochs", type=int, default=None, help="every job's epochs")
    g.add_argument("--evaluate", action="store_true", help="evaluate each trained model (AutoAttack)")


def _value(text: str) -> Any:
    """A flag's value: a JSON number, boolean or null when it parses as one, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (_, eq, _) in zip(items, pairs, strict=True) if not eq]
    if bad:
        raise UsageError(f"{what}: expected FIELD=VALUE, got {bad[0]!r}")
    return [(k.strip(), v) for k, _, v in pairs]


def sweep_create_body(a: argparse.Namespace) -> dict[str, Any]:
    """The POST /v1/sweeps body of `lbdn sweeps create`: a JSON file, or --set/--grid flags."""
    if a.target:
        try:
            body = json.loads(Path(a.target).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the sweep file {a.target}: {e}") from None
        if not isinstance(body, dict):
            raise UsageError(f"{a.target}: expected a JSON object (the POST /v1/sweeps body)")
    else:
        if not a.set:
            raise UsageError("give a JSON file or --set FIELD=VALUE (e.g. --set model=Toy) and --grid FIELD=V1,V2")
        spec = {k: _value(v) for k, v in _pairs(a.set, "--set")}
        grid = {k: [_value(x) for x in v.split(",")] for k, v in _pairs(a.grid, "--grid")}
        body = {"spec": spec, "grid": grid}
    extra = {"name": a.name, "tags": a.tag, "epochs": a.epochs, "evaluate": a.evaluate or None}
    return {**body, **{k: v for k, v in extra.items() if v is not None}}


@command(
    "sweeps",
    "your sweeps; one sweep's jobs and results; create or cancel one",
    _sweeps_args,
    description="lbdn sweeps | lbdn sweeps ID | lbdn sweeps create [FILE.json] [--set F=V]... [--grid F=V1,V2]... "
    "| lbdn sweeps cancel ID",
)
def cmd_sweeps(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import sweep_results_table

    if a.sweep == "create":
        sw = c.create_sweep(sweep_create_body(a))
    elif a.sweep == "cancel":
        if not a.target:
            raise UsageError("lbdn sweeps cancel ID")
        sw = c.cancel_sweep(a.target)
    elif a.sweep:
        sw = c.sweep(a.sweep)
    else:
        return _list_sweeps(c, ui, a.limit)
    ui.json(sw) if ui.as_json else ui.out.print(sweep_results_table(sw))
    return EXIT_OK


def _list_sweeps(c: Client, ui: Ui, limit: int) -> int:
    items = c.sweeps(limit=limit)
    if ui.as_json:
        ui.json(items)
        return EXIT_OK
    for sw in items:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(sw["counts"].items()))
        ui.out.print(f"{sw['id']}  {sw['name']}  {sw['status']}  ({counts})  {sw['created_at'][:19]}")
    if not items:
        ui.out.print("no sweeps")
    return EXIT_OK


def _wait_sweep(c: Client, ui: Ui, sweep_id: str, poll: float) -> dict[str, Any]:
    """Poll the sweep until no job is left to run (workers make its evaluation jobs; a read makes none)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    sw = c.sweep(sweep_id)
    console = ui.err if ui.as_json else ui.out
    with Progress(
        TextColumn(f"[bold]{sweep_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("sweep", total=len(sw["jobs"]), info="")
        while True:
            done = sum(1 for j in sw["jobs"] if j["status"] in ("succeeded", "failed", "cancelled", "deleted"))
            info = ", ".join(f"{n} {k}" for k, n in sorted(sw["counts"].items()))
            bar.update(task, total=len(sw["jobs"]), completed=done, info=info)
            if sw["status"] != "running":
                return sw
            time.sleep(poll)
            sw = c.sweep(sweep_id)


# ---- lbdn paper list ------------------------------------------------------------------------
@command("list", "the presets", group="paper")
def cmd_paper_list(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.report import presets_table

    items = c.presets()
    if ui.as_json:
        ui.json(items)
    else:
        ui.out.print(presets_table(items))
    return EXIT_OK


# ---- lbdn paper run -------------------------------------------------------------------------
def _run_args(run: argparse.ArgumentParser) -> None:
    run.add_argument("name")
    run.add_argument("--epochs", type=int, default=None, help="override the paper's epochs (a short budget)")
    run.add_argument("--seeds", type=int, nargs="+", default=None, help="override the paper's seeds")
    run.add_argument("--no-eval", action="store_true", help="train only (skip the AutoAttack evaluations)")
    run.add_argument(
        "--n-examples",
        dest="n_examples",
        type=int,
        default=None,
        help="test inputs each evaluation attacks (default 1000)",
    )
    run.add_argument("--eps", type=int, nargs="+", default=None, help="evaluation radii in 1/255 units")
    run.add_argument(
        "--attacks",
        nargs="+",
        default=None,
        help="evaluate with these AutoAttack attacks only (e.g. apgd-ce), not the standard set",
    )
    run.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="FIELD=V1,V2",
        help="run only the jobs whose spec matches, e.g. --only layer=Sandwich,Plain gamma=1",
    )
    run.add_argument(
        "--set",
        nargs="+",
        default=None,
        metavar="FIELD=VALUE",
        help="spec fields for every job, e.g. --set train_batch_size=64 lr=0.005",
    )
    run.add_argument("--follow", action="store_true", help="wait until every job has finished")
    run.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)


def _sweep_body(a: argparse.Namespace) -> dict[str, Any]:
    """The POST /v1/sweeps body of `lbdn paper run`'s arguments."""
    body: dict[str, Any] = {"preset": a.name}
    if a.epochs:
        body["epochs"] = a.epochs
    if a.seeds:
        body["seeds"] = a.seeds
    if a.no_eval:
        body["evaluate"] = False
    elif a.n_examples or a.eps or a.attacks:
        body["evaluate"] = {k: v for k, v in (("n_examples", a.n_examples), ("eps", a.eps)) if v}
        if a.attacks:
            body["evaluate"].update(version="custom", attacks=a.attacks)
    if a.only:
        body["only"] = _only(a.only)
    if a.set:
        body["overrides"] = _overrides(a.set)
    return body


@command("run", "start a preset as a sweep of jobs", _run_args, group="paper")
def cmd_paper_run(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    sw = c.create_sweep(_sweep_body(a))
    if not ui.as_json:
        ui.out.print(
            f"sweep {sw['id']}: {len(sw['jobs'])} training jobs of {a.name}"
            + (" (each evaluated once trained)" if sw.get("evaluate") else "")
        )
        ui.out.print(f"  progress: lbdn sweeps {sw['id']}    report: lbdn paper report {a.name}")
    if a.follow:
        try:
            sw = _wait_sweep(c, ui, sw["id"], a.poll)
        except KeyboardInterrupt:
            ui.err.print(f"detached: sweep {sw['id']} keeps running")
            return EXIT_DETACHED
        counts = ", ".join(f"{n} {k}" for k, n in sorted(sw["counts"].items()))
        # the bar alone ends the command: say what to do with the results
        (ui.err if ui.as_json else ui.out).print(
            f"sweep {sw['id']} {sw['status']} ({counts}); the report: lbdn paper report {a.name} --sweep {sw['id']}"
        )
    if ui.as_json:
        ui.json(sw)
    return EXIT_OK if sw["status"] in ("running", "succeeded") else EXIT_FAILED


def _only(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise UsageError(f"--only {item!r}: expected FIELD=VALUE[,VALUE...], e.g. layer=Sandwich,Plain")
        out.setdefault(key, []).extend(v for v in values.split(",") if v)
    return out


def _overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected FIELD=VALUE, e.g. train_batch_size=64")
        try:
            out[key] = json.loads(value)  # numbers, true/false, null
        except ValueError:
            out[key] = value  # a bare string such as a loss name
    return out


# ---- lbdn paper report ----------------------------------------------------------------------
def _report_args(rep: argparse.ArgumentParser) -> None:
    rep.add_argument("name")
    rep.add_argument("--sweep", default=None, help="which sweep (default: the newest of the preset)")
    rep.add_argument("--out", default=None, help="folder of report.md and the PNGs (default ./paper-report-NAME)")
    rep.add_argument("--wait", action="store_true", help="wait for the sweep to finish first")
    rep.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)


@command("report", "the preset's table / figure from the finished jobs", _report_args, group="paper")
def cmd_paper_report(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.report import write_report

    if a.sweep:
        sweep_id = a.sweep
    else:
        found = c.sweeps(preset=a.name, limit=1)
        if not found:
            raise ApiError(404, "Not Found", f"no sweep of preset {a.name!r} yet; start one: lbdn paper run {a.name}")
        sweep_id = found[0]["id"]
    if a.wait:
        _wait_sweep(c, ui, sweep_id, a.poll)
    sw = c.sweep(sweep_id, history=True)
    preset = c.preset(sw["preset"] or a.name)
    out = Path(a.out or f"paper-report-{preset['name']}")
    made = write_report(preset, sw, out)
    if ui.as_json:
        ui.json({"sweep": sweep_id, "files": [str(p) for p in made]})
    else:
        print((out / "report.md").read_text(), flush=True)  # as written: Markdown must not be re-wrapped
        ui.out.print("written: " + ", ".join(str(p) for p in made))
    return EXIT_OK
