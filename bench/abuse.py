"""Abuse probes of issue 22 ("Every way in has a limit") against a real `lbdn serve` on loopback.

    python bench/abuse.py            # embedded SQLite store + SQLite broker
    python bench/abuse.py --stack    # Redis (127.0.0.1:6379) + PostgreSQL (127.0.0.1:5432)

Each probe prints its status codes, time and the API's memory (RSS from /proc at 20 Hz: before and
peak growth). Exit 1 on any 5xx, growth over --max-growth-mib or a failed check (e.g. a URL built
from Host). About 1-3 minutes here (the zip bomb is built once, ~40 s, kept in /tmp).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.abuse_payloads import npy, png_bad_chunk, with_metadata
from bench.service import PgDatabase, Serve

REDIS_URL = "redis://127.0.0.1:6379/0"
KWL = {"model": "KWL", "layer": "Sandwich", "scale": "small", "dataset": "cifar10", "gamma": 1.0}
TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": 2}
HUGE = {"model": "Resnet", "scale": "xlarge", "dataset": "tiny_imagenet"}
_JSON = {"Content-Type": "application/json"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Probe:
    """Runs probes, sampling the API's RSS while each runs, and keeps the verdict."""

    def __init__(self, pid: int, max_growth: float) -> None:
        self.pid, self.max_growth, self.bad = pid, max_growth, []

    def __call__(self, name: str, fn: Callable[[], tuple[list[int], str]]) -> None:
        before, peak, stop = rss_mib(self.pid), [0.0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(self.pid))
                time.sleep(0.05)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        t0 = time.perf_counter()
        try:
            codes, note = fn()
        except Exception as e:  # a probe that breaks is a finding too
            codes, note = [], f"ERROR {type(e).__name__}: {e}"[:200]
        took = time.perf_counter() - t0
        stop.set()
        t.join()
        growth = max(peak[0], rss_mib(self.pid)) - before
        counts = ", ".join(f"{c}x{n}" for c, n in sorted(Counter(codes).items())) or "-"
        verdict = "ok"
        if any(c >= 500 for c in codes) or note.startswith(("ERROR", "FAIL")):
            verdict = "FAIL"
        if growth > self.max_growth:
            verdict, note = "FAIL", f"{note}; grew {growth:.0f} MiB"
        if verdict == "FAIL":
            self.bad.append(name)
        print(f"{verdict:4s} {name:38s} {counts:22s} {took:7.2f} s  RSS {before:6.0f} +{growth:5.0f} MiB  {note}")
        sys.stdout.flush()


# ---- payloads ----------------------------------------------------------------------------------------
def zip_bomb(declared: int = 2 * 2**30) -> bytes:
    """A torch.save zip (~2 MB) of a small state dict whose tensor record is replaced by one deflated
    entry expanding to `declared` bytes of zeros (torch's reader inflates a record whole)."""
    cache = Path(f"/tmp/lbdn-abuse-bomb-{declared}.zip")
    if cache.exists():
        return cache.read_bytes()
    import torch

    saved = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(4)}}, saved)
    buf = io.BytesIO()
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                with z.open(info.filename, "w", force_zip64=True) as f:
                    chunk = bytes(2**20)
                    for _ in range(declared // len(chunk)):
                        f.write(chunk)
            else:
                z.writestr(info.filename, src.read(info))
    cache.write_bytes(buf.getvalue())
    return buf.getvalue()


def plant_model(svc: Serve) -> tuple[str, Path]:
    """A succeeded KWL CIFAR-10 training job with random weights, made in the store directly."""
    import torch

    from core.settings import Settings
    from core.store import jobs, leases, make_engine, session_factory, transaction
    from lipcore.checkpoint import save_model
    from lipcore.models import build
    from lipcore.spec import ExperimentSpec

    settings = Settings(_env_file=None, **{k[5:].lower(): v for k, v in svc.env.items() if k.startswith("LBDN_")})
    engine = make_engine(settings.db_url)
    es = ExperimentSpec.model_validate(KWL)
    with transaction(session_factory(engine)) as s:
        job, _ = jobs.create_job(s, tenant="bench", kind="train", spec=es.model_dump(mode="json"))
        leases.acquire(s, job.id, "bench", 60)
        leases.finish(s, job.id, "bench", "succeeded", result={"test_acc": 10.0})
    engine.dispose()
    torch.manual_seed(0)
    path = settings.job_dir(job.id) / "model.safetensors"
    save_model(path, build(es), es, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return job.id, path


# ---- probes --------------------------------------------------------------------------------------------
def raw_status(url: str, request: bytes, timeout: float = 30.0) -> tuple[socket.socket, int]:
    """Send a raw HTTP request; (the open socket, the status code of its answer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(request)
    line = b""
    while not line.endswith(b"\r\n"):
        got = sock.recv(1)
        if not got:
            return sock, 0
        line += got
    return sock, int(line.split()[1])


def _status(c: httpx.Client, path: str, **kw: Any) -> int:
    return c.post(path, **kw).status_code


def run(svc: Serve, probe: Probe, args: argparse.Namespace) -> None:
    c = httpx.Client(base_url=svc.url, headers=svc.headers, timeout=120)
    model_id, weights = plant_model(svc)
    run_submissions(c, probe)
    run_imports(c, probe, weights)
    run_certify(c, svc, probe, model_id)
    run_cancel_and_host(c, probe, model_id)
    run_connections(svc, probe, args)


def run_submissions(c: httpx.Client, probe: Probe) -> None:
    """Sweeps and the submission path (findings 2, 3)."""
    post = partial(_status, c)

    def grid_3x100() -> tuple[list[int], str]:
        r = c.post("/v1/sweeps", json={"spec": TOY, "grid": {k: list(range(100)) for k in ("gamma", "seed", "scale")}})
        return [r.status_code], r.json().get("detail", "")[:60]

    probe("sweep grid 3 x 100 values", grid_3x100)

    def grid_past_quota() -> tuple[list[int], str]:
        r = c.post("/v1/sweeps", json={"spec": TOY, "grid": {"gamma": [1, 2], "seed": [0, 1, 2, 3]}})
        n = len(c.get("/v1/jobs", params={"kind": "train", "status": "queued"}).json()["items"])
        return [r.status_code], ("FAIL: " if r.status_code < 400 or n else "") + f"queued jobs after: {n}"

    probe("sweep 2 x 4 past quota 3", grid_past_quota)
    for where, body in (
        ("in spec", {"spec": {**HUGE, "train_batch_size": 65536}, "grid": {"seed": [0, 1]}}),
        ("in overrides", {"spec": HUGE, "grid": {"seed": [0]}, "overrides": {"train_batch_size": 65536}}),
    ):
        probe(f"sweep cost ceiling ({where})", lambda body=body: ([post("/v1/sweeps", json=body)], ""))
    for value in ("NaN", "Infinity"):
        body = '{"kind": "train", "spec": {"model": "KWL", "dataset": "cifar10", "offset": ' + value + "}}"
        probe(f"spec offset {value}", lambda b=body: ([post("/v1/jobs", content=b, headers=_JSON)], ""))
    key = {"Idempotency-Key": "sweep-eval:swp_x:job_y"}
    probe(
        "internal idempotency key", lambda: ([post("/v1/jobs", json={"kind": "train", "spec": TOY}, headers=key)], "")
    )


def run_imports(c: httpx.Client, probe: Probe, weights: Path) -> None:
    """Imports (findings 1, 4, 5 and the metadata 500s); `weights`: a saved model.safetensors."""

    def upload(data: bytes, name: str, spec: str) -> int:
        return _status(c, "/v1/models/import", files={"checkpoint": (name, data)}, data={"spec": spec})

    bomb = zip_bomb()
    probe(
        f"import zip bomb ({len(bomb) / 1e6:.1f} MB -> 2 GiB)",
        lambda: ([upload(bomb, "model.ckpt", json.dumps(KWL))], ""),
    )
    # the file's own spec names a folder outside LBDN_DATA_DIR; the form's spec is a plain one
    raw = weights.read_bytes()
    saved = json.loads(json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]["spec"])
    outside = with_metadata(weights, spec=json.dumps({**saved, "dataset": "image_folder", "data_path": "/etc"}))

    def data_path() -> tuple[list[int], str]:
        code = upload(outside, "model.safetensors", json.dumps(KWL))
        return [code], "FAIL: imported" if code < 300 else ""

    probe("import data_path outside data dir", data_path)
    plain = weights.read_bytes()
    probe("import spec of 100,000 '['", lambda: ([upload(plain, "model.safetensors", "[" * 100_000)], ""))
    for field, value in (
        ("classes", "5"),
        ("mean", "5"),
        ("classes", "[1, 2]"),
        ("classes", "[null]"),
        ("std", '["x"]'),
    ):
        data = with_metadata(weights, **{field: value})
        probe(
            f"import metadata {field}={value}", lambda d=data: ([upload(d, "model.safetensors", json.dumps(KWL))], "")
        )
    probe("GET /v1/models after imports", lambda: ([c.get("/v1/models").status_code], ""))

    def import_rate() -> tuple[list[int], str]:
        data = weights.read_bytes()
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: upload(data, "model.safetensors", json.dumps(KWL)), range(30)))
        return codes, "30 imports from 6 clients"

    probe("import rate", import_rate)


def run_certify(c: httpx.Client, svc: Serve, probe: Probe, model_id: str) -> None:
    """Certify bodies and parsers (finding 6 and the parser 500s), and a model deleted mid-certify."""
    post = partial(_status, c)
    certify = f"/v1/models/{model_id}/certify"
    big = json.dumps({"inputs": [[[[0.5] * 32] * 32] * 3] * 200}).encode()
    big = big + b" " * max(0, 16 * 2**20 - 1024 - len(big))

    def big_bodies() -> tuple[list[int], str]:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: post(certify, content=big, headers=_JSON), range(8)))
        return codes, f"8 x {len(big) / 2**20:.0f} MiB JSON"

    probe("certify JSON bodies, 8 at once", big_bodies)
    deep = b'{"inputs": ' + b"[" * 900 + b"]" * 900 + b"}"
    probe("certify inputs nested 900 deep", lambda: ([post(certify, content=deep, headers=_JSON)], ""))
    npy_ctype = {"Content-Type": "application/x-npy"}
    for label, header in (
        ("shape ( + 9,000 '-'", b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"-" * 9000 + b"\n"),
        ("shape ( + 9,000 '+'", b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"+" * 9000 + b"\n"),
        ("header ends mid-dict", b"{'descr': '<f4', 'fortran_order': False, \n"),
    ):
        probe(f"certify .npy {label}", lambda h=header: ([post(certify, content=npy(h), headers=npy_ctype)], ""))
    png = png_bad_chunk()
    probe("certify PNG bad chunk type", lambda: ([post(certify, files={"file": ("x.png", png, "image/png")})], ""))
    probe("certify while the model is deleted", lambda: _certify_then_delete(c, svc))


def _certify_then_delete(c: httpx.Client, svc: Serve) -> tuple[list[int], str]:
    """60 certify requests of a fresh model from 20 clients, and a DELETE of it among them."""
    mid, _ = plant_model(svc)
    body = json.dumps({"inputs": [[[[0.5] * 32] * 32] * 3]}).encode()

    def one() -> int | str:
        try:
            return _status(c, f"/v1/models/{mid}/certify", content=body, headers=_JSON)
        except httpx.HTTPError as e:  # a connection the server dropped
            return type(e).__name__

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(one) for _ in range(60)]
        time.sleep(0.2)
        deleted = c.delete(f"/v1/jobs/{mid}").status_code
        got = [f.result() for f in futures]
    dropped = [g for g in got if isinstance(g, str)]
    note = f"60 certify, then DELETE; {len(dropped)} connections dropped" if dropped else "60 certify, then DELETE"
    return [g for g in got if isinstance(g, int)] + [deleted], ("FAIL: " if dropped else "") + note


def run_cancel_and_host(c: httpx.Client, probe: Probe, model_id: str) -> None:
    """Cancel and Host (findings 10, 11)."""

    def cancel() -> tuple[list[int], str]:
        job = c.post("/v1/jobs", json={"kind": "train", "spec": TOY}).json()
        codes = [c.post(f"/v1/jobs/{job['id']}/cancel").status_code, c.post(f"/v1/jobs/{job['id']}/cancel").status_code]
        status = c.get(f"/v1/jobs/{job['id']}").json()["status"]
        return codes, f"ends {status}"

    probe("cancel twice", cancel)

    def host_header() -> tuple[list[int], str]:
        r = c.get(f"/v1/jobs/{model_id}/artifacts", headers={"Host": "evil.example"})
        urls = [i["url"] for i in r.json().get("items", [])] if r.status_code == 200 else []
        return [r.status_code], ("FAIL: Host in url " if any("evil" in u for u in urls) else "") + (urls or ["-"])[0]

    probe("artifact url with Host: evil.example", host_header)


def run_connections(svc: Serve, probe: Probe, args: argparse.Namespace) -> None:
    """Streams, half-sent headers and bad keys: last, since the bad keys block this address's new keys."""
    job = httpx.post(f"{svc.url}/v1/jobs", headers=svc.headers, json={"kind": "train", "spec": TOY}, timeout=30).json()
    auth = f"Authorization: Bearer {svc.key}\r\n".encode()
    request = f"GET /v1/jobs/{job['id']}/events HTTP/1.1\r\nHost: x\r\n".encode() + auth + b"\r\n"

    def streams() -> tuple[list[int], str]:
        socks, codes = [], []
        for _ in range(args.streams):
            sock, code = raw_status(svc.url, request)
            socks.append(sock)
            codes.append(code)
        for sock in socks:
            sock.close()
        return codes, f"{args.streams} streams of one tenant"

    probe("event streams", streams)

    def half_headers() -> tuple[list[int], str]:
        host, port = svc.url.removeprefix("http://").split(":")
        socks = []
        for _ in range(args.half_open):
            sock = socket.create_connection((host, int(port)), timeout=60)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(sock)
        t0 = time.perf_counter()
        poll = httpx.get(f"{svc.url}/v1/jobs/{job['id']}", headers=svc.headers, timeout=60)
        closed = 0
        for sock in socks:
            sock.settimeout(max(1.0, args.header_timeout + 5 - (time.perf_counter() - t0)))
            try:
                closed += sock.recv(1) == b""
            except OSError:
                pass
            sock.close()
        note = f"{closed}/{len(socks)} closed by the server after {time.perf_counter() - t0:.1f} s"
        return [poll.status_code], ("" if closed == len(socks) else "FAIL: ") + note

    probe(f"{args.half_open} half-sent headers", half_headers)

    def bad_keys() -> tuple[list[int], str]:
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda i: httpx.get(f"{svc.url}/v1/jobs", headers={"Authorization": f"Bearer bad{i}"}).status_code,
                    range(400),
                )
            )
        t0 = time.perf_counter()
        good = httpx.get(f"{svc.url}/v1/jobs/{job['id']}", headers=svc.headers, timeout=60).status_code
        return codes + [good], f"400 bad keys; a known key's poll then took {1000 * (time.perf_counter() - t0):.0f} ms"

    probe("flood of bad keys", bad_keys)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", action="store_true", help="Redis + PostgreSQL instead of the embedded defaults")
    ap.add_argument("--max-growth-mib", type=float, default=300.0, help="API memory growth that fails a probe")
    ap.add_argument("--streams", type=int, default=30, help="event streams opened by one tenant")
    ap.add_argument("--half-open", type=int, default=300, help="connections that send half a header")
    ap.add_argument("--header-timeout", type=float, default=3.0, help="LBDN_HEADER_TIMEOUT_S of the server")
    args = ap.parse_args()
    db = PgDatabase("lbdn_abuse") if args.stack else None
    svc = Serve(
        broker_url=REDIS_URL if args.stack else None,
        database_url=db.url if db else None,
        max_active_jobs_per_tenant="3",
        header_timeout_s=str(args.header_timeout),
        key_cache_s="600",  # the bench's own key stays known through the bad-key flood
    )
    assert svc.proc is not None
    t0 = time.monotonic()
    try:
        stack = "Redis + PostgreSQL" if args.stack else "embedded SQLite store + SQLite broker"
        print(f"== lbdn serve ({stack}), API pid {svc.proc.pid}; fail on 5xx or growth > {args.max_growth_mib:g} MiB")
        probe = Probe(svc.proc.pid, args.max_growth_mib)
        run(svc, probe, args)
    finally:
        svc.stop()
        if db:
            db.drop()
    print(f"== {len(probe.bad)} probe(s) failed in {time.monotonic() - t0:.0f} s: {', '.join(probe.bad) or 'none'}")
    return 1 if probe.bad else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
