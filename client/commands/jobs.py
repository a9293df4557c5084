"""`lbdn submit | jobs | show | compare | cancel | delete | logs | pull`: training jobs and their files."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from client import flags
from client.commands import command
from client.http import ApiError, Client
from client.ui import EXIT_DETACHED, EXIT_FAILED, EXIT_OK, Ui, UsageError


def _job_status_exit(job: dict[str, Any]) -> int:
    return EXIT_OK if job["status"] in ("succeeded", "queued", "running") else EXIT_FAILED


def follow_job(c: Client, ui: Ui, job_id: str) -> int:
    """Show the job's live progress until it ends (Ctrl-C detaches); its exit code."""
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


def _job_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("job")


# ---- submit ---------------------------------------------------------------------------------
def _submit_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("spec_file", nargs="?", help="a JSON spec (ExperimentSpec fields), e.g. a run's spec.json")
    s.add_argument("--follow", "-f", action="store_true", help="show a live progress bar until the job ends")
    s.add_argument("--idempotency-key", default=None, help="retries with the same key return the same job")
    s.add_argument(
        "--devices", type=int, default=None, help="devices of one worker to train on, data-parallel (default 1)"
    )
    _label_flags(s)
    flags.add_spec_flags(s)


def _label_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None, help="what you call the run (lbdn jobs --name finds it)")
    p.add_argument("--tag", action="append", default=None, help="a tag (repeat for more; lbdn jobs --tag filters)")
    p.add_argument("--note", default=None, help="free text kept with the run")


def _labels(a: argparse.Namespace) -> dict[str, Any]:
    """The labels given on the command line (name, tags, note)."""
    given = {"name": a.name, "tags": a.tag, "note": a.note}
    return {k: v for k, v in given.items() if v is not None}


def _submit_body(a: argparse.Namespace) -> dict[str, Any]:
    """The POST /v1/jobs body of a spec file or of the experiment flags."""
    if not a.spec_file:
        return {"kind": "train", "spec": flags.spec_fields(a)}
    if flags.given(a.rest):
        raise UsageError("give a spec file or experiment flags, not both")
    try:
        body = json.loads(Path(a.spec_file).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the spec file {a.spec_file}: {e}") from None
    if not isinstance(body, dict):
        raise UsageError(f"{a.spec_file}: expected a JSON object (an experiment spec)")
    if "kind" not in body:  # a bare spec, as in a run directory's spec.json
        body = {"kind": "train", "spec": body}
    return body


@command(
    "submit",
    "submit a training job: SPEC.json or the flags of python -m lipcore",
    _submit_args,
    description="lbdn submit SPEC.json, or lbdn submit --model ... --layer ... (the flags of "
    "python -m lipcore, listed below)",
)
def cmd_submit(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    body = _submit_body(a)
    if a.devices is not None:
        if body.get("kind") != "train":
            raise UsageError("--devices is for training jobs")
        body["resources"] = {**body.get("resources", {}), "devices": a.devices}
    body.update(_labels(a))
    job = c.submit(body, a.idempotency_key)
    if not a.follow:
        ui.json(job) if ui.as_json else ui.out.print(
            f"submitted {job['id']} ({job['status']})  follow it: lbdn show {job['id']} / lbdn logs {job['id']} -f"
        )
        return EXIT_OK
    if not ui.as_json:
        ui.out.print(f"submitted {job['id']}; Ctrl-C detaches (the job keeps running)")
    return follow_job(c, ui, job["id"])


# ---- listing and single jobs ----------------------------------------------------------------
def _jobs_args(j: argparse.ArgumentParser) -> None:
    j.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    j.add_argument("--kind", choices=["train", "evaluate", "import"])
    j.add_argument("--tag", action="append", default=None, help="jobs with this tag (repeat: every tag given)")
    j.add_argument("--name", default=None, help="jobs whose name holds this text (any case)")
    for field in ("model", "layer", "dataset", "sweep"):
        j.add_argument(f"--{field}", default=None, help=f"jobs whose {field} is exactly this")
    j.add_argument("--gamma", type=float, default=None)
    j.add_argument("--seed", type=int, default=None)
    j.add_argument(
        "--sort",
        default=None,
        help="-created (default), created, or a final metric, largest first with '-' (write --sort=-cert_acc_36)",
    )
    j.add_argument("--limit", type=int, default=50)


FILTERS = ("status", "kind", "tag", "name", "model", "layer", "dataset", "sweep", "gamma", "seed", "sort")


@command("jobs", "your jobs: newest first, filtered or sorted by a metric", _jobs_args)
def cmd_jobs(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import jobs_table

    items = c.jobs(limit=a.limit, **{f: getattr(a, f) for f in FILTERS})
    ui.json(items) if ui.as_json else ui.out.print(jobs_table(items) if items else "no jobs")
    return EXIT_OK


@command("show", "a job's state, progress and results", _job_arg)
def cmd_show(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import epoch_table, summary_lines

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
        ui.out.print(epoch_table(job["metrics"]))
    return EXIT_OK


def _compare_args(cp: argparse.ArgumentParser) -> None:
    cp.add_argument("jobs", nargs="+", metavar="JOB", help="two or more job ids")


@command("compare", "runs side by side: the spec fields that differ and the final metrics", _compare_args)
def cmd_compare(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import compare_table

    jobs = [c.job(job_id) for job_id in a.jobs]
    ui.json(jobs) if ui.as_json else ui.out.print(compare_table(jobs))
    return EXIT_OK


def _label_args(lb: argparse.ArgumentParser) -> None:
    lb.add_argument("job")
    _label_flags(lb)
    lb.add_argument("--clear", choices=["name", "tags", "note"], action="append", default=[], help="remove a label")


@command("label", "name, tag or annotate a job (--tag replaces its tags)", _label_args)
def cmd_label(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    changes: dict[str, Any] = {**_labels(a), **{field: None for field in a.clear}}
    if not changes:
        raise UsageError("give --name, --tag, --note or --clear")
    job = c.label(a.job, **changes)
    if ui.as_json:
        ui.json(job)
    else:
        tags = ", ".join(job.get("tags") or []) or "-"
        ui.out.print(
            f"job {job['id']}: name {job.get('name') or '-'}; tags {tags}; note {job.get('note') or '-'}", markup=False
        )
    return EXIT_OK


@command("cancel", "stop a job at its next step", _job_arg)
def cmd_cancel(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    job = c.cancel(a.job)
    ui.json(job) if ui.as_json else ui.out.print(
        f"job {job['id']}: {job['status']}" + (" (stops at its next step)" if job["status"] == "running" else "")
    )
    return EXIT_OK


@command("delete", "remove a finished job and its files", _job_arg)
def cmd_delete(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    c.delete(a.job)
    ui.json({"deleted": a.job}) if ui.as_json else ui.out.print(f"deleted {a.job} and its files")
    return EXIT_OK


def _logs_args(lg: argparse.ArgumentParser) -> None:
    lg.add_argument("job")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)


@command("logs", "a job's log lines", _logs_args)
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


def _pull_args(pl: argparse.ArgumentParser) -> None:
    pl.add_argument("job")
    pl.add_argument("--dir", default=None, help="target folder (default ./JOB)")
    pl.add_argument("--name", nargs="+", default=None, help="only these files (e.g. model.safetensors)")
    pl.add_argument("--csv", action="store_true", help="only the metrics, one row per epoch: DIR/metrics.csv")


@command("pull", "download a job's files (or its metrics as CSV)", _pull_args)
def cmd_pull(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    if a.csv:
        return _pull_csv(c, ui, a)
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


def _pull_csv(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    """`lbdn pull JOB --csv`: GET /v1/jobs/{id}/metrics?format=csv written to DIR/metrics.csv."""
    text = c.metrics_csv(a.job)
    folder = Path(a.dir) if a.dir else Path(a.job)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.csv"
    path.write_text(text)
    rows = max(0, len(text.splitlines()) - 1)
    ui.json({"path": str(path), "epochs": rows}) if ui.as_json else ui.out.print(f"{path}  ({rows} epochs)")
    return EXIT_OK
