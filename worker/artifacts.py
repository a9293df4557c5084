"""A job's files between this host's run directory and the artifact store (core.artifacts).

Training writes into a local run directory (Settings.job_dir) as lipcore always has; the store gets:
each resumable checkpoint as soon as it is written (with the epoch's metrics.json and log.txt), and
every file of the run at the end. A job picked up on another host first pulls the store's checkpoint
(the newest complete one: `put` makes a file visible whole, so it is never half of one), so it
continues where the last host left it. With the local store the run directory is the store's own
folder and nothing moves.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from core.artifacts import ArtifactStore, fetch, push_folder
from lipcore.batch_results import is_batch_file
from lipcore.rundir import CHECKPOINT, LOG, METRICS, SPEC

log = logging.getLogger("lbdn.worker")
# What a resume needs besides the checkpoint: spec.json (train checks it is the same experiment) and
# log.txt (appended across resumptions, so the finished run's log tells its whole story).
RESUME_FILES = (SPEC, LOG)


def pull_checkpoint(store: ArtifactStore, job_id: str, run_dir: Path) -> bool:
    """Put the store's checkpoint of `job_id` (and its spec and log) into `run_dir`; True if there was
    one. A checkpoint already in `run_dir` is replaced: the store's is the one the job last reported
    (a push precedes each epoch's report), whichever host wrote it."""
    if not store.remote or not fetch(store, job_id, CHECKPOINT, run_dir / CHECKPOINT):
        return False
    for name in RESUME_FILES:
        fetch(store, job_id, name, run_dir / name)
    return True


def checkpoint_pusher(store: ArtifactStore, job_id: str, owned: Callable[[], None]) -> Callable[[Path], None]:
    """lipcore.train's on_checkpoint: the checkpoint (then the epoch's metrics and log) into the store.
    `owned()` raises LeaseLost once another worker has the job: it must not see this one's files."""

    def push(ckpt: Path) -> None:
        if not store.remote:
            return
        owned()
        store.put(job_id, CHECKPOINT, ckpt)
        for name in (METRICS, LOG):
            if (ckpt.parent / name).is_file():
                store.put(job_id, name, ckpt.parent / name)

    return push


def save_run(store: ArtifactStore, job_id: str, run_dir: Path, *, finished: bool) -> None:
    """Every file of the run into the store; a finished run's local copy is removed then (S3 only: the
    store holds it all, and the next attempt of an unfinished one may reuse its checkpoint here)."""
    if not store.remote:
        return
    pushed = push_folder(store, job_id, run_dir)
    log.info("job %s: %d files saved to the artifact store", job_id, len(pushed))
    if finished:
        shutil.rmtree(run_dir, ignore_errors=True)


def save_after_failure(store: ArtifactStore, job_id: str, run_dir: Path) -> None:
    """What a failed run left (its log says why) into the store, best effort: the job's error is
    what the user needs, a store that is down too must not replace it."""
    try:
        save_run(store, job_id, run_dir, finished=True)
    except Exception:
        log.exception("job %s: its files could not be saved after it failed", job_id)


def pull_eval_state(store: ArtifactStore, job_id: str, out: Path) -> int:
    """The store's batch files of evaluation `job_id` (lipcore.batch_results: the verdicts of each
    finished (eps, batch) of inputs) into `out`, so it attacks only the others; how many there were."""
    if not store.remote:
        return 0
    names = [a.name for a in store.list(job_id) if is_batch_file(a.name)]
    for name in names:
        fetch(store, job_id, name, out / name)
    return len(names)


def eval_state_pusher(store: ArtifactStore, job_id: str, out: Path, owned: Callable[[], None]) -> Callable[[], None]:
    """Called after each batch of an evaluation (before its progress report): the batch files in
    `out` written since the last call into the store, so a host that picks the job up after this
    one died attacks only the batches not done. `owned()` raises LeaseLost once another worker
    has the job."""
    seen: dict[str, tuple[int, int]] = {}

    def stamp(p: Path) -> tuple[int, int]:
        st = p.stat()
        return st.st_size, st.st_mtime_ns

    def push() -> None:
        if not store.remote:
            return
        for p in sorted(out.glob("autoattack*.json")):
            if is_batch_file(p.name) and seen.get(p.name) != (now := stamp(p)):
                owned()
                store.put(job_id, p.name, p)
                seen[p.name] = now

    if out.is_dir():  # pulled from the store (or left by this host): already there
        seen.update({p.name: stamp(p) for p in out.glob("autoattack*.json")})
    return push
