"""Prometheus metrics: requests by route and status, certify latency, and (read from the job store at
scrape time, so every API replica reports the same) jobs by state and job durations."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from core.store import jobs

log = logging.getLogger("lbdn.api")
JOB_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 24 * 3600, float("inf"))


class JobsCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        try:
            with self.sessions() as s:
                counts = jobs.count_by_state(s)
                spans = jobs.duration_histogram(s, JOB_BUCKETS)
        except Exception as e:
            log.warning("job metrics unavailable: %s", e)
            return
        gauge = GaugeMetricFamily("lbdn_jobs", "Jobs in the store by kind and state", labels=["kind", "status"])
        for kind, status, n in counts:
            gauge.add_metric([kind, status], n)
        yield gauge
        hist = HistogramMetricFamily(
            "lbdn_job_duration_seconds", "Run time of finished jobs (first start to end)", labels=["kind", "status"]
        )
        for kind, status, within, seconds in spans:
            buckets = [("+Inf" if b == float("inf") else str(b), n) for b, n in zip(JOB_BUCKETS, within, strict=True)]
            hist.add_metric([kind, status], buckets, seconds)
        yield hist


class ServiceMetrics:
    """One registry per app (tests build several apps in one process).

    `registry` is what /metrics serves. Under `lbdn api --processes N` (PROMETHEUS_MULTIPROC_DIR set
    by the supervisor, api.replicas) it sums every replica's files, so a scrape that reaches any
    replica through the shared port answers for all of them; the metrics are still made in a
    registry of this app, which prometheus_client then backs by this process's files."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        r = CollectorRegistry()
        self.requests = Counter(
            "lbdn_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "lbdn_http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=r
        )
        self.certify_latency = Histogram(
            "lbdn_certify_duration_seconds",
            "Certify compute time per request (decode, forward, certificate)",
            ["attack"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.certified_inputs = Counter("lbdn_certified_inputs", "Inputs certified", registry=r)
        self.certify_attacks_active = Gauge(
            "lbdn_certify_attacks_active",
            "?attack=true searches running now",
            registry=r,
            multiprocess_mode="livesum",  # replicas: the sum over those alive
        )
        self.shed = Counter(
            "lbdn_http_shed", "Requests answered 503 after LBDN_MAX_QUEUE_MS without a place (api.shedding)", registry=r
        )
        self.jobs_submitted = Counter("lbdn_jobs_submitted", "Jobs created", ["kind"], registry=r)
        self.registry = r
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.registry.register(JobsCollector(sessions))  # from the store: the same in every replica
