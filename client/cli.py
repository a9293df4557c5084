"""The client commands of `lbdn`: submit, jobs, show, logs, cancel, delete, pull, models, evaluate,
certify, sweeps and paper (list / run / report).

Exit codes follow the server's problem+json status: 0 ok, 1 job failed or server error, 2 bad
request (400/413/415/422) or bad local input, 3 not found (404), 4 conflict (409), 5 authentication
(401/403), 6 service unreachable, 130 detached with Ctrl-C (the job keeps running). With --json,
answers (and problems) are printed as JSON on stdout for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from client import flags
from client.http import ApiError, Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_AUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4, 5, 6
EXIT_DETACHED = 130
COMMANDS = (
    "submit",
    "jobs",
    "show",
    "logs",
    "cancel",
    "delete",
    "pull",
    "models",
    "evaluate",
    "certify",
    "export",
    "sweeps",
    "paper",
)


def exit_code(status: int) -> int:
    """The exit code of an HTTP error status (0: the service was not reached)."""
    if status == 0:
        return EXIT_UNREACHABLE
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_CONFLICT
    if status in (401, 403):
        return EXIT_AUTH
    if 400 <= status < 500:
        return EXIT_USAGE
    return EXIT_FAILED


class Ui:
    """Where output goes: rich on stdout, messages on stderr, or JSON only."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=str), flush=True)

    def say(self, *things: Any) -> None:
        if not self.as_json:
            self.out.print(*things)


# ---- jobs -----------------------------------------------------------------------------------
def _job_status_exit(job: dict[str, Any]) -> int:
    return EXIT_OK if job["status"] in ("succeeded", "queued", "running") else EXIT_FAILED


def _follow(c: Client, ui: Ui, job_id: str) -> int:
    from client.follow import follow, print_summary

    try:
        job = follow(c, job_id, ui.err if ui.as_json else ui.out)
    except KeyboardInterrupt:
        ui.err.print(f"detached: job {job_id} keeps running (lbdn show {job_id}, lbdn cancel {job_id})")
        return EXIT_DETACHED
    if ui.as_json:
        ui.json(job)
    else:
        print_summary(job, ui.out)
    return _job_status_exit(job)


def cmd_submit(c: Client, ui: Ui, a: argparse.Namespace, rest: list[str]) -> int:
    if a.spec_file:
        if flags.given(rest):
            raise UsageError("give a spec file or experiment flags, not both")
        try:
            body = json.loads(Path(a.spec_file).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the spec file {a.spec_file}: {e}") from None
        if not isinstance(body, dict):
            raise UsageError(f"{a.spec_file}: expected a JSON object (an experiment spec)")
        if "kind" not in body:  # a bare spec, as in a run directory's spec.json
            body = {"kind": "train", "spec": body}
    else:
        body = {"kind": "train", "spec": flags.spec_fields(a)}
    if a.devices is not None:
        if body.get("kind") != "train":
            raise UsageError("--devices is for training jobs")
        body["resources"] = {**body.get("resources", {}), "devices": a.devices}
    job = c.submit(body, a.idempotency_key)
    if not a.follow:
        ui.json(job) if ui.as_json else ui.out.print(
            f"submitted {job['id']} ({job['status']})  follow it: lbdn show {job['id']} / lbdn logs {job['id']} -f"
        )
        return EXIT_OK
    if not ui.as_json:
        ui.out.print(f"submitted {job['id']}; Ctrl-C detaches (the job keeps running)")
    return _follow(c, ui, job["id"])


def cmd_jobs(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import jobs_table

    items = c.jobs(status=a.status, kind=a.kind, limit=a.limit)
    ui.json(items) if ui.as_json else ui.out.print(jobs_table(items) if items else "no jobs")
    return EXIT_OK


def cmd_show(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import summary_lines

    job = c.job(a.job)
    if ui.as_json:
        ui.json(job)
        return EXIT_OK
    p = job.get("progress")
    for line in summary_lines(job):
        ui.out.print(line)
    if job["status"] in ("queued", "running"):
        where = f"epoch {p['epoch']}/{p['epochs']} step {p['step']}/{p['steps']}" if p else "not started"
        eta = f", ETA {p['eta_s']:.0f} s" if p and p.get("eta_s") is not None else ""
        ui.out.print(f"  {where}{eta}; cancel requested" if job.get("cancel_requested") else f"  {where}{eta}")
    ui.out.print(f"  created {job['created_at']}, attempt {job.get('attempt')}")
    if job.get("metrics"):
        ui.out.print("  latest epoch: " + json.dumps(job["metrics"]))
    return EXIT_OK


def cmd_logs(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    offset = 0
    try:
        while True:
            page = c.logs(a.job, offset)
            for line in page["lines"]:
                print(line, flush=True)
            offset = page["next_offset"]
            if page["lines"]:
                continue
            if not a.follow or c.job(a.job)["status"] in ("succeeded", "failed", "cancelled"):
                # one more read: lines written between the last read and the final state
                for line in c.logs(a.job, offset)["lines"]:
                    print(line, flush=True)
                return EXIT_OK
            time.sleep(a.poll)
    except KeyboardInterrupt:
        return EXIT_DETACHED


def cmd_cancel(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    job = c.cancel(a.job)
    ui.json(job) if ui.as_json else ui.out.print(
        f"job {job['id']}: {job['status']}" + (" (stops at its next step)" if job["status"] == "running" else "")
    )
    return EXIT_OK


def cmd_delete(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    c.delete(a.job)
    ui.json({"deleted": a.job}) if ui.as_json else ui.out.print(f"deleted {a.job} and its files")
    return EXIT_OK


def cmd_export(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    out = Path(a.output or f"{a.model}.{ {'onnx': 'onnx', 'torch': 'pt2'}[a.format] }")
    c.export(a.model, a.format, out)
    ui.json({"model": a.model, "format": a.format, "path": str(out)}) if ui.as_json else ui.say(f"wrote {out}")
    return EXIT_OK


def cmd_pull(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    items = c.artifacts(a.job)
    if a.name:
        missing = set(a.name) - {i["name"] for i in items}
        if missing:
            raise ApiError(404, "Not Found", f"job {a.job} has no artifacts {sorted(missing)}")
        items = [i for i in items if i["name"] in a.name]
    folder = Path(a.dir) if a.dir else Path(a.job)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for item in items:
        path = c.download(a.job, item["name"], folder / item["name"])
        done.append({"name": item["name"], "size": item["size"], "path": str(path)})
        ui.say(f"{path}  ({item['size']:,} bytes)")
    if ui.as_json:
        ui.json(done)
    elif not done:
        ui.out.print(f"job {a.job} has no files yet")
    return EXIT_OK


def cmd_models(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from rich.table import Table

    from client.render import describe, fmt

    items = c.models(a.limit)
    if ui.as_json:
        ui.json(items)
        return EXIT_OK
    t = Table("model", "experiment", "gamma", "clean acc %", "certified acc % (36/72/108)")
    for m in items:
        cert = m.get("certified_acc") or {}
        t.add_row(
            m["id"],
            describe(m["spec"]),
            fmt(m.get("gamma"), 3),
            fmt(m.get("clean_acc"), 2),
            "/".join(fmt(cert.get(k), 1) for k in ("36", "72", "108")),
        )
    ui.out.print(t if items else "no trained models")
    return EXIT_OK


def cmd_evaluate(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    attack: dict[str, Any] = {"eps": a.eps, "version": a.version, "n_examples": a.n_examples}
    if a.attacks:
        attack["attacks"] = a.attacks
    job = c.submit({"kind": "evaluate", "model_id": a.model, "attack": attack})
    if not a.follow:
        ui.json(job) if ui.as_json else ui.out.print(
            f"submitted {job['id']} (evaluate {a.model}); lbdn show {job['id']}"
        )
        return EXIT_OK
    return _follow(c, ui, job["id"])


def cmd_certify(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import certify_table

    paths = [Path(f) for f in a.files]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"no file {p}")
    answer = c.certify(a.model, paths, attack=a.attack, scale=a.scale)
    ui.json(answer) if ui.as_json else ui.out.print(certify_table(answer, input_names(paths, answer["input_shape"])))
    return EXIT_OK


def input_names(paths: list[Path], input_shape: list[int]) -> list[str]:
    """The name of each certified input, in the server's order: an image is one input, a .npy
    holding a batch (n, *input_shape) is n inputs, named file.npy[i]."""
    import numpy as np

    names = []
    for p in paths:
        shape: tuple[int, ...] = ()
        if p.suffix.lower() == ".npy":
            with p.open("rb") as f:  # the header only: never the data, never a pickle
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape = read(f)[0]
        if len(shape) == len(input_shape) + 1:
            names += [f"{p}[{i}]" for i in range(shape[0])]
        else:
            names.append(str(p))
    return names


# ---- sweeps and the paper -------------------------------------------------------------------
def cmd_sweeps(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.report import sweep_table

    if a.sweep:
        sw = c.sweep(a.sweep)
        ui.json(sw) if ui.as_json else ui.out.print(sweep_table(sw))
        return EXIT_OK
    items = c.sweeps(limit=a.limit)
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
    """Poll the sweep (which also submits its evaluation jobs) until no job is left to run."""
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


def cmd_paper(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client import report

    if a.paper_cmd == "list":
        items = c.presets()
        if ui.as_json:
            ui.json(items)
        else:
            ui.out.print(report.presets_table(items))
        return EXIT_OK
    if a.paper_cmd == "run":
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
        sw = c.create_sweep(body)
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
        if ui.as_json:
            ui.json(sw)
        return EXIT_OK if sw["status"] in ("running", "succeeded") else EXIT_FAILED
    # report
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
    made = report.write_report(preset, sw, out)
    if ui.as_json:
        ui.json({"sweep": sweep_id, "files": [str(p) for p in made]})
    else:
        print((out / "report.md").read_text(), flush=True)  # as written: Markdown must not be re-wrapped
        ui.out.print("written: " + ", ".join(str(p) for p in made))
    return EXIT_OK


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


# ---- the parser -----------------------------------------------------------------------------
class UsageError(Exception):
    """Bad input on this side (a missing file, mixed arguments)."""


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's copy of these options must not reset a value given before the subcommand
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print answers as JSON (for scripts)"
    )
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help="the service (default $LBDN_URL or http://127.0.0.1:8000)"
    )
    p = argparse.ArgumentParser(
        prog="lbdn", description="Client of the lbdn service ($LBDN_URL, $LBDN_API_KEY)", parents=[common]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "submit",
        parents=[common],
        help="submit a training job: SPEC.json or the flags of python -m lipcore",
        description="lbdn submit SPEC.json, or lbdn submit --model ... --layer ... (the flags of "
        "python -m lipcore, listed below)",
    )
    s.add_argument("spec_file", nargs="?", help="a JSON spec (ExperimentSpec fields), e.g. a run's spec.json")
    s.add_argument("--follow", "-f", action="store_true", help="show a live progress bar until the job ends")
    s.add_argument("--idempotency-key", default=None, help="retries with the same key return the same job")
    s.add_argument(
        "--devices", type=int, default=None, help="devices of one worker to train on, data-parallel (default 1)"
    )
    flags.add_spec_flags(s)
    j = sub.add_parser("jobs", parents=[common], help="your jobs, newest first")
    j.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    j.add_argument("--kind", choices=["train", "evaluate"])
    j.add_argument("--limit", type=int, default=50)
    for name, text in (
        ("show", "a job's state, progress and results"),
        ("cancel", "stop a job at its next step"),
        ("delete", "remove a finished job and its files"),
    ):
        sub.add_parser(name, parents=[common], help=text).add_argument("job")
    lg = sub.add_parser("logs", parents=[common], help="a job's log lines")
    lg.add_argument("job")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    pl = sub.add_parser("pull", parents=[common], help="download a job's files")
    pl.add_argument("job")
    pl.add_argument("--dir", default=None, help="target folder (default ./JOB)")
    pl.add_argument("--name", nargs="+", default=None, help="only these files (e.g. model.safetensors)")
    m = sub.add_parser("models", parents=[common], help="your trained models")
    m.add_argument("--limit", type=int, default=50)
    ev = sub.add_parser("evaluate", parents=[common], help="AutoAttack beside the certificates of a trained model")
    ev.add_argument("model")
    ev.add_argument("--eps", type=int, nargs="+", default=[36, 72, 108], help="l2 radii in 1/255 units (pixel space)")
    ev.add_argument("--version", default="standard", choices=["standard", "plus", "rand", "custom"])
    ev.add_argument("--attacks", nargs="+", default=None, help="with --version custom: e.g. apgd-ce square")
    ev.add_argument("--n-examples", dest="n_examples", type=int, default=1000, help="test inputs attacked")
    ev.add_argument("--follow", "-f", action="store_true")
    ce = sub.add_parser("certify", parents=[common], help="certified l2 radii of image / .npy files")
    ce.add_argument("model")
    ce.add_argument("files", nargs="+", help="PNG/JPEG of the model's input size, or .npy arrays")
    ce.add_argument("--attack", action="store_true", help="also search the smallest adversarial perturbation")
    ce.add_argument(
        "--scale",
        choices=["pixel", "model"],
        default="pixel",
        help="the space of the inputs' values: pixel = image pixels in [0, 1] (the server normalises them "
        "with the model's mean/std; PNG/JPEG are always pixels), model = already normalised model-input "
        "values (.npy of the network's own input space). Default: pixel",
    )
    ex = sub.add_parser(
        "export", parents=[common], help="a model as ONNX or a torch.export program, with certify metadata"
    )
    ex.add_argument("model")
    ex.add_argument("--format", choices=["onnx", "torch"], default="onnx")
    ex.add_argument("-o", "--output", help="file to write (default MODEL.onnx / MODEL.pt2)")
    sw = sub.add_parser("sweeps", parents=[common], help="your sweeps, or one sweep's jobs")
    sw.add_argument("sweep", nargs="?")
    sw.add_argument("--limit", type=int, default=50)
    pa = sub.add_parser("paper", parents=[common], help="the paper's experiments as presets").add_subparsers(
        dest="paper_cmd", required=True
    )
    pa.add_parser("list", parents=[common], help="the presets")
    run = pa.add_parser("run", parents=[common], help="start a preset as a sweep of jobs")
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
    rep = pa.add_parser("report", parents=[common], help="the preset's table / figure from the finished jobs")
    rep.add_argument("name")
    rep.add_argument("--sweep", default=None, help="which sweep (default: the newest of the preset)")
    rep.add_argument("--out", default=None, help="folder of report.md and the PNGs (default ./paper-report-NAME)")
    rep.add_argument("--wait", action="store_true", help="wait for the sweep to finish first")
    rep.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    rest = argv[1:]
    ui = Ui(getattr(a, "json", False))
    handlers = {"submit": lambda c: cmd_submit(c, ui, a, rest)}
    try:
        with Client(getattr(a, "url", None)) as c:
            if a.cmd in handlers:
                return handlers[a.cmd](c)
            return globals()[f"cmd_{a.cmd}"](c, ui, a)
    except ApiError as e:
        if ui.as_json:
            ui.json(e.body)
        where = f"{e.status} {e.title}: " if e.status else ""
        print(f"lbdn: {where}{e.detail}", file=sys.stderr)  # plain: a message must not be re-wrapped
        return exit_code(e.status)
    except UsageError as e:
        print(f"lbdn: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
