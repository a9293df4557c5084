"""Devices owned by processes (issue 18), with real processes: a worker given `--devices cpu,cpu`
runs two jobs at once in two pool processes on two distinct device slots and each job says where it
ran; a job asking for 2 devices trains data-parallel there; one asking for more devices than any
worker owns is refused at submission."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.service.test_workers import wait_for
from worker.devices import parse_devices, visible_gpus

TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 2.0, "epochs": 4}


def test_device_lists() -> None:
    assert parse_devices("cpu,cpu", 1) == ["cpu:0", "cpu:1"]
    assert parse_devices("cpu", 3) == ["cpu:0", "cpu:1", "cpu:2"]
    assert parse_devices("cuda:0,cuda:2", 1) == ["cuda:0", "cuda:2"]
    assert parse_devices("auto", 2, gpus=4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert parse_devices("auto", 2, gpus=0) == ["cpu:0", "cpu:1"]
    with pytest.raises(ValueError, match="no visible GPU"):
        parse_devices("all", 1, gpus=0)
    with pytest.raises(ValueError, match="named twice"):
        parse_devices("cuda:1,cuda:1", 1)
    with pytest.raises(ValueError, match="tpu"):
        parse_devices("tpu", 1)


def test_auto_without_gpus_gives_cpu_processes() -> None:
    if visible_gpus():
        pytest.skip("this machine has GPUs")
    assert parse_devices("auto", 2) == ["cpu:0", "cpu:1"]


@pytest.fixture
def two_cpu_worker(service_factory):
    svc = service_factory("redis", "postgres")
    w = svc._start(["worker", "--devices", "cpu,cpu"], "worker", stop_signal="SIGKILL")
    w.wait_for(" ready.")
    w.wait_for("owns cpu:0,cpu:1")
    return svc, w


@pytest.mark.slow
def test_two_jobs_run_at_once_on_two_devices_and_say_where(two_cpu_worker) -> None:
    svc, _ = two_cpu_worker
    client = httpx.Client(base_url=svc.url, timeout=60)
    ids = [client.post("/v1/jobs", json={"kind": "train", "spec": TOY}).json()["id"] for _ in range(2)]
    done = [wait_for(client, i, lambda j: j["status"] == "succeeded", what="both jobs") for i in ids]
    assert sorted(j["device"] for j in done) == ["cpu:0", "cpu:1"]
    assert len({j["worker"] for j in done}) == 1 and all(j["host"] for j in done)
    # both ran at once, each in its own pool process (the lease owner names the pid)
    a, b = done
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
    owners = {e["data"]["worker"].split(":")[1] for i in ids for e in _states(client, i) if "device" in e["data"]}
    assert len(owners) == 2
    for job in done:
        summary = json.loads(client.get(f"/v1/jobs/{job['id']}/artifacts/summary.json").content)
        assert summary["placement"] == {"device": job["device"], "host": job["host"], "worker": job["worker"]}


def _states(client: httpx.Client, job_id: str) -> list[dict]:
    """The state events of a finished job (its event stream ends at the job's end)."""
    events, kind = [], None
    for line in client.get(f"/v1/jobs/{job_id}/events").text.splitlines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and kind == "state":
            events.append({"data": json.loads(line.split(":", 1)[1])})
    return events


@pytest.mark.slow
def test_a_two_device_job_trains_data_parallel_and_too_many_are_refused(two_cpu_worker) -> None:
    svc, _ = two_cpu_worker
    client = httpx.Client(base_url=svc.url, timeout=60)
    too_many = client.post("/v1/jobs", json={"kind": "train", "spec": TOY, "resources": {"devices": 3}})
    assert too_many.status_code == 422
    assert "3 devices" in too_many.text and "owns 2" in too_many.text
    r = client.post("/v1/jobs", json={"kind": "train", "spec": TOY, "resources": {"devices": 2}})
    assert r.status_code == 201 and r.json()["resources"] == {"devices": 2}
    job = wait_for(client, r.json()["id"], lambda j: j["status"] == "succeeded", what="the DDP job")
    # both devices, rank 0's first: which one that is depends on the pool process that took the job
    assert sorted(job["device"].split(",")) == ["cpu:0", "cpu:1"]
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    # a cancel reaches the ranks: they agree on a step, checkpoint and stop; the devices are free after
    long = client.post("/v1/jobs", json={"kind": "train", "spec": {**TOY, "epochs": 200}, "resources": {"devices": 2}})
    long_id = long.json()["id"]
    wait_for(client, long_id, lambda j: (j.get("progress") or {}).get("epoch", 0) >= 2, what="a running DDP job")
    assert client.post(f"/v1/jobs/{long_id}/cancel").status_code in (200, 202)
    wait_for(client, long_id, lambda j: j["status"] == "cancelled", what="the cancel")
    one = client.post("/v1/jobs", json={"kind": "train", "spec": TOY}).json()["id"]
    assert wait_for(client, one, lambda j: j["status"] == "succeeded", what="a job after")["device"] in (
        "cpu:0",
        "cpu:1",
    )


def test_a_multi_device_job_without_such_a_worker_is_refused(client) -> None:
    r = client.post("/v1/jobs", json={"kind": "train", "spec": TOY, "resources": {"devices": 2}})
    assert r.status_code == 422
    assert "resources.devices" in r.text and "no worker has reported" in r.text


def _ranks_under(pid: int) -> list[int]:
    """DDP ranks (spawned `spawn_main` processes) anywhere below process `pid` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue

    def below(p: int) -> bool:
        while p > 1:
            p = parents.get(p, 0)
            if p == pid:
                return True
        return False

    ranks = []
    for p in parents:
        try:
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes() and below(p):
                ranks.append(p)
        except OSError:
            continue
    return sorted(ranks)


@pytest.mark.slow
def test_a_killed_rank_resumes_the_job_which_reports_every_epoch_once(two_cpu_worker) -> None:
    svc, worker = two_cpu_worker
    client = httpx.Client(base_url=svc.url, timeout=60)
    spec = {**TOY, "epochs": 8}
    r = client.post("/v1/jobs", json={"kind": "train", "spec": spec, "resources": {"devices": 2}})
    job_id = r.json()["id"]
    wait_for(client, job_id, lambda j: (j.get("metrics") or {}).get("epoch", 0) >= 2, what="epoch 2")
    ranks = _ranks_under(worker.proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    job = wait_for(client, job_id, lambda j: j["status"] == "succeeded", what="the resumed job")
    assert job["resumed_from"] is not None and job["resumed_from"]["epoch"] >= 2
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()["items"]
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    metric_events = [
        line for line in client.get(f"/v1/jobs/{job_id}/events").text.splitlines() if line == "event: metrics"
    ]
    assert len(metric_events) == 8  # every epoch reported once, the one repeated after the restart included
