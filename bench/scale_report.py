"""The summary of bench/scale_sim.py: each of issue 19's targets next to what this run measured."""

from __future__ import annotations

from typing import Any

from bench.scale_reads import pct

# (what, measured key, target, unit): a row passes when measured <= target
TARGETS = (
    ("poll p99, {jobs:,} jobs / {rows:,} metric rows", "rest poll p99", 100.0, "ms"),
    ("list p99, first page", "rest list first p99", 250.0, "ms"),
    ("list p99, deep page", "rest list deep p99", 250.0, "ms"),
    ("reaper pass, {running:,} running jobs (leases live)", "reaper live", 1000.0, "ms"),
    ("read errors (both phases)", "errors", 0, ""),
    ("jobs lost in the drain", "lost", 0, ""),
    ("jobs claimed twice in the drain (finished by two workers)", "twice", 0, ""),
    ("whole run", "run s", 600.0, "s"),
)
# measured without a target, printed under the table
INFO = (
    ("metrics p99 / sweep p99 (100 jobs), at rest", ("rest metrics p99", "rest sweep p99"), "ms"),
    ("clients' CPU per read at rest (--via store: the route code)", ("rest cpu/read",), "ms"),
    ("poll p99 / list p99 during the drain", ("drain poll p99", "drain list first p99"), "ms"),
    ("reaper pass, {running:,} running jobs, all expired (re-queued and re-sent)", ("reaper expired",), "ms"),
    ("  of which sending the {running:,} messages (pipelined)", ("reaper sending",), "ms"),
    ("/metrics scrape, its job-store part, {jobs:,} jobs (median of 5)", ("scrape",), "ms"),
    ("drain: claims/s, metric rows/s", ("claims/s", "rows/s"), ""),
    ("drain: jobs left unfinished when --max-drain-s stopped it", ("unfinished",), ""),
    ("drain: jobs taken over after a lost lease (their worker's heartbeat starved)", ("again",), ""),
)


def read_stats(prefix: str, lat: dict[str, list[float]]) -> dict[str, float]:
    """{'<prefix> <read> p99': ms, ...} of one phase's reads."""
    return {f"{prefix} {op} p{q}": pct(xs, q / 100) for op, xs in lat.items() for q in (50, 99)}


def print_summary(got: dict[str, Any], load: tuple[float, float, float]) -> None:
    """`got`: the phases' measurements (and the sizes `jobs`, `rows`, `running` of phase 2)."""
    print(f"\n== summary (load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; issue 19's targets)")
    print(f"   {'':58s} {'measured':>10s} {'target':>9s}")
    sizes = {k: int(got.get(k, 0)) for k in ("jobs", "rows", "running")}
    for label, key, target, unit in TARGETS:
        what, value = label.format(**sizes), got.get(key)
        if value is None:
            print(f"   {what:58s} {'(not run)':>10s} {_fmt(target, unit):>9s}")
            continue
        verdict = "PASS" if value <= target else "MISS"
        print(f"   {what:58s} {_fmt(value, unit):>10s} {'<= ' + _fmt(target, unit):>9s}  {verdict}")
    for label, keys, unit in INFO:
        values = [got[k] for k in keys if k in got]
        if values:
            print(f"   {label.format(**sizes)}: {' / '.join(_fmt(v, unit) for v in values)}")


def _fmt(value: float, unit: str) -> str:
    if not unit:
        return f"{value:g}" if isinstance(value, int) or value >= 100 else f"{value:.1f}"
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
