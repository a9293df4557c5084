"""Certify throughput and latency under concurrent clients, through `lbdn serve` (issue 20).

    python bench/certify_load.py                    # all phases, 15 s each
    python bench/certify_load.py --duration 30 --set certify_batch_wait_ms=0

Imports the paper-code checkpoints KWL-Sandwich-small (CIFAR-10, 32x32 RGB) and Toy-Sandwich-small
from ../shared/paper-checkpoints through `POST /v1/models/import`, then runs, one phase after the
other, N closed-loop clients (the next request as soon as the answer arrives) that each send `.npy`
bodies of single inputs (N = 1, 8, 32 for KWL; 1 and 20 for the Toy) and one client of 16-input
requests, while a prober GETs /healthz every 0.1 s. Prints per phase inputs/s, request p50/p99 and
errors (any non-2xx), then the issue's ratios: throughput of 8 and 32 single-image clients against
the 16-image client's, and their p99 against the 1-client p50. All numbers come from one run on one
machine, whose load average is printed beside them (the 2 cores are shared).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.service import Serve

PAPER = Path(__file__).resolve().parents[1] / "../shared/paper-checkpoints"
KWL_DIR = PAPER / "cifar10/KWL-Sandwich-small-gamma2.0"
TOY_DIR = PAPER / "square_wave/Toy-Sandwich-small-gamma5.0"
KWL_SPEC = {"model": "KWL", "layer": "Sandwich", "scale": "small", "gamma": 2.0, "dataset": "cifar10"}
TOY_SPEC = {"model": "Toy", "layer": "Sandwich", "scale": "small", "gamma": 5.0}


@dataclass
class Phase:
    model: str
    clients: int
    per_request: int
    lat: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    health: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.lat) * self.per_request / self.seconds

    def q(self, p: float) -> float:
        s = sorted(self.lat)
        return 1000 * s[min(len(s) - 1, int(p * len(s)))] if s else float("nan")

    def hq(self, p: float) -> float:
        s = sorted(self.health)
        return 1000 * s[min(len(s) - 1, int(p * len(s)))] if s else float("nan")


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def import_model(svc: Serve, folder: Path, spec: dict) -> str:
    r = httpx.post(
        f"{svc.url}/v1/models/import",
        headers=svc.headers,
        files={"checkpoint": ("model.ckpt", (folder / "model.ckpt").read_bytes())},
        data={"spec": json.dumps(spec)},
        timeout=300,
    )
    r.raise_for_status()
    return str(r.json()["id"])


async def run_phase(url: str, key: str, model: str, bodies: list[bytes], phase: Phase, duration: float) -> None:
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/x-npy"}
    end = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=phase.clients + 4)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as s:

        async def client(i: int) -> None:
            n = i
            while time.monotonic() < end:
                body = bodies[n % len(bodies)]
                n += phase.clients
                t0 = time.perf_counter()
                try:
                    async with s.post(f"/v1/models/{model}/certify?scale=pixel", data=body, headers=headers) as r:
                        text = await r.read()
                        ok = r.status == 200
                        phase.codes[r.status] += 1
                        why = f"{r.status} {text[:160]!r}"
                except (TimeoutError, aiohttp.ClientError) as e:
                    ok, why = False, f"{type(e).__name__}: {e}"
                phase.lat.append(time.perf_counter() - t0)
                if not ok:
                    phase.errors += 1
                    if len(phase.samples) < 3 or why[:3] not in {x[:3] for x in phase.samples}:
                        phase.samples.append(why)

        async def prober() -> None:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                async with s.get("/healthz") as r:
                    await r.read()
                phase.health.append(time.perf_counter() - t0)
                await asyncio.sleep(0.1)

        t0 = time.monotonic()
        await asyncio.gather(prober(), *(client(i) for i in range(phase.clients)))
        phase.seconds = time.monotonic() - t0


def measure(phases: list[Phase], duration: float, extra: dict[str, str]) -> None:
    """Run the phases one after the other against a fresh `lbdn serve` with LBDN_ settings `extra`."""
    io_kwl = np.load(KWL_DIR / "io.npz")["x"].astype(np.float32)  # (16, 3, 32, 32) in [0, 1]
    io_toy = np.load(TOY_DIR / "io.npz")["x"].astype(np.float32)
    singles = {"kwl": [npy(io_kwl[i : i + 1]) for i in range(16)], "toy": [npy(io_toy[i : i + 1]) for i in range(16)]}
    sixteen = {"kwl": [npy(io_kwl[:16])], "toy": [npy(io_toy[:16])]}
    svc = Serve(**extra)
    try:
        models = {"kwl": import_model(svc, KWL_DIR, KWL_SPEC), "toy": import_model(svc, TOY_DIR, TOY_SPEC)}
        for name in models:  # start the certify processes and load the model in each: not measured
            for clients in (1, 2, 8):
                warm = Phase(name, clients, 1)
                asyncio.run(run_phase(svc.url, svc.key, models[name], singles[name], warm, 3.0))
        for p in phases:
            bodies = sixteen[p.model] if p.per_request == 16 else singles[p.model]
            asyncio.run(run_phase(svc.url, svc.key, models[p.model], bodies, p, duration))
            print(
                f"{p.model:4s} {p.clients:3d} clients x {p.per_request:2d} inputs: {p.rate:7.1f} inputs/s, "
                f"p50 {p.q(0.5):7.1f} ms, p99 {p.q(0.99):7.1f} ms, errors {p.errors}, "
                f"/healthz p99 {p.hq(0.99):.1f} ms",
                flush=True,
            )
            for s in p.samples:
                print("   ", s)
    finally:
        svc.stop()


def report(phases: list[Phase], extra: dict[str, str]) -> bool:
    """Print the phases as a Markdown table and the issue's ratios; whether the targets are met."""
    load = os.getloadavg()
    settings = " ".join(f"{k}={v}" for k, v in extra.items()) or "defaults"
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs; settings: {settings}")
    print("| model | clients | inputs/request | inputs/s | p50 ms | p99 ms | errors | /healthz p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for p in phases:
        print(
            f"| {p.model} | {p.clients} | {p.per_request} | {p.rate:.1f} | {p.q(0.5):.1f} | {p.q(0.99):.1f} | "
            f"{p.errors} | {p.hq(0.99):.1f} |"
        )
    one, batch16 = phases[0], phases[1]
    ok = True
    for p in (phases[2], phases[3]):
        ratio, tail = p.rate / batch16.rate, p.q(0.99) / one.q(0.5)
        ok &= ratio >= 0.7 and tail <= 4
        print(
            f"KWL {p.clients} clients: throughput {ratio:.2f}x the 16-image client's (>= 0.7), p99 {tail:.2f}x the 1-client p50 (<= 4)"
        )
    toy20 = phases[6]
    ok &= toy20.q(0.99) <= 100 and toy20.errors == 0
    print(f"Toy 20 clients: p99 {toy20.q(0.99):.1f} ms (<= 100), errors {toy20.errors} (0)")
    print("targets met" if ok else "targets NOT met")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an LBDN_ setting of the API")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.set)
    phases = [
        Phase("kwl", 1, 1),
        Phase("kwl", 1, 16),
        Phase("kwl", 8, 1),
        Phase("kwl", 32, 1),
        Phase("toy", 1, 1),
        Phase("toy", 1, 16),
        Phase("toy", 20, 1),
    ]
    measure(phases, args.duration, extra)
    sys.exit(0 if report(phases, extra) else 1)


if __name__ == "__main__":
    main()
