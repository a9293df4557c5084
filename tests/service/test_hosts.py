"""The drill across hosts (bench/host_drill.py), shorter: API on host A, workers on B and C, each its
own LBDN_HOME, sharing only a moto S3 server, PostgreSQL and Redis. B is killed mid-run; C finishes
the job from B's stored checkpoint; A serves its files, certify and export, and deletes its objects."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bench.host_drill import drill_ok, run_drill, s3_kwargs, s3_settings
from core.artifacts import open_store
from tests.service.test_artifacts import s3_endpoint  # noqa: F401  (the moto server fixture)

EPOCHS = 5


@pytest.mark.slow
def test_a_job_killed_on_one_host_finishes_on_another(tmp_path: Path, s3_endpoint, own_pg_url, redis_url) -> None:  # noqa: F811
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"s3://lbdn/hosts-{secrets.token_hex(3)}"
    shared = {
        **s3_settings(s3_endpoint, url),
        "LBDN_DATABASE_URL": own_pg_url,
        "LBDN_BROKER_URL": redis_url,
        "LBDN_QUEUE_PREFIX": f"t{secrets.token_hex(4)}.",
        "port": str(port),
    }
    store = open_store(url, tmp_path / "unused", tmp_path / "cache", 1 << 30, **s3_kwargs(s3_endpoint))
    report = run_drill(tmp_path / "drill", shared, EPOCHS, store)
    print(report)
    assert drill_ok(report, EPOCHS) == []
    assert report["attempts"] == 2 and report["b_scratch"] and not report["c_scratch_left"]
    assert {"model.safetensors", "checkpoint.safetensors", "metrics.json", "summary.json", "log.txt"} <= set(
        report["artifacts"]
    )
    assert report["a_cache_files"] >= 1  # A certified from its cached copy, not a folder of B or C
