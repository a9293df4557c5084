"""`--follow`: a job's live progress bar (rich) from its Server-Sent Events, ending with its summary.

The bar shows epoch, the latest step loss, test accuracy (test loss for the Toy regression), certified accuracy at 36/255 (when the
job records it) and the server's ETA. Off a terminal it prints one line per finished epoch instead.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from client.http import Client
from client.render import fmt, summary_lines

FINISHED = ("succeeded", "failed", "cancelled")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -:--"
    s = round(seconds)
    return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"ETA {s // 60}:{s % 60:02d}"


def _epoch_line(row: dict[str, Any]) -> str:
    parts = [
        f"epoch {row.get('epoch')}",
        f"train loss {fmt(row.get('train_loss'), 4)}",
        f"test loss {fmt(row.get('test_loss'), 4)}",
    ]
    if row.get("test_acc") is not None:
        parts.append(f"test acc {fmt(row['test_acc'], 1)}%")
    certs = [f"{fmt(row[k], 1)}" for k in ("cert_acc_36", "cert_acc_72", "cert_acc_108") if row.get(k) is not None]
    if certs:
        parts.append("cert acc 36/72/108 " + "/".join(certs) + "%")
    return ", ".join(parts)


def follow(client: Client, job_id: str, console: Console) -> dict[str, Any]:
    """Show the job's progress until it finishes; return the final job. KeyboardInterrupt passes
    through to the caller (which detaches: the job keeps running)."""
    job = client.job(job_id)
    if job["status"] in FINISHED:
        return job
    live = console.is_terminal
    fields = {"epoch": "-", "loss": "-", "test": "acc -", "cert": "-", "eta": _eta(None)}
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn(
            "loss {task.fields[loss]}  test {task.fields[test]}  cert36 {task.fields[cert]}  {task.fields[eta]}"
        ),
        console=console,
        transient=False,
        disable=not live,
    )
    with progress:
        task = progress.add_task(job_id, total=100.0, **fields)
        for _, kind, data in client.events(job_id):
            if kind == "progress":
                fields.update(
                    epoch=f"{data.get('epoch')}/{data.get('epochs')}",
                    loss=fmt(data.get("loss"), 4),
                    eta=_eta(data.get("eta_s")),
                )
                progress.update(task, completed=100.0 * float(data.get("fraction") or 0.0), **fields)
            elif kind == "metrics":
                if data.get("test_acc") is not None:
                    fields["test"] = f"acc {fmt(data['test_acc'], 1)}%"
                elif data.get("test_loss") is not None:  # the Toy regression has no accuracy
                    fields["test"] = f"loss {fmt(data['test_loss'], 4)}"
                if data.get("cert_acc_36") is not None:
                    fields["cert"] = f"{fmt(data['cert_acc_36'], 1)}%"
                progress.update(task, **fields)
                if not live:
                    console.print(_epoch_line(data), highlight=False)
            elif kind == "state" and data.get("status") == "succeeded":
                progress.update(task, completed=100.0)
    return client.job(job_id)


def print_summary(job: dict[str, Any], console: Console) -> None:
    for line in summary_lines(job):
        console.print(line, highlight=False)
