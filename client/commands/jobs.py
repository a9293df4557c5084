"""`lbdn submit | jobs | show | cancel | delete | logs | pull`: training jobs and their files."""

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
    flags.add_spec_flags(s)


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
    j.add_argument("--kind", choices=["train", "evaluate"])
    j.add_argument("--limit", type=int, default=50)


@command("jobs", "your jobs, newest first", _jobs_args)
def cmd_jobs(c: Client, ui: Ui, a: argparse.Namespace) -> int:
    from client.render import jobs_table

    items = c.jobs(status=a.status, kind=a.kind, limit=a.limit)
    ui.json(items) if ui.as_json else ui.out.print(jobs_table(items) if items else "no jobs")
    return EXIT_OK


@command("show", "a job's state, progress and results", _job_arg)
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


@command("pull", "download a job's files", _pull_args)
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
