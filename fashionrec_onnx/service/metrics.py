"""Prometheus metrics through `prometheus_client`, added up over every worker process: requests
by route, method and status, a latency histogram by route, and the catalog's item count.

`fashionrec serve` points ``PROMETHEUS_MULTIPROC_DIR`` at a directory emptied at each start (see
`run.metrics_dir`) before any worker imports `prometheus_client`; each worker then writes its
counts to files there and a scrape reads them all, so whichever worker answers, the figures are
the service's. Every label comes from a closed set: the route template (never the requested
path), the method (those HTTP defines; any other token is "other") and the status the service
answered, so no caller can grow the number of series.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from .config import MULTIPROC_ENV
from .upload_guard import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROUTES = ("/search", "/health", "/metrics", "/docs", "/openapi.json")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})


def route_of(path: str) -> str:
    if path in ROUTES:
        return path
    return "/items/{key}" if path.startswith("/items/") else "other"


def method_of(method: str) -> str:
    """A method HTTP defines, or "other": a made-up token must not become a label."""
    return method if method in METHODS else "other"


def status_of(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


class _Gauges:
    """Values read at scrape time (the catalog's item count: every worker sees the same)."""

    def __init__(self, gauges: Mapping[str, tuple[str, float]]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (text, value) in self.gauges.items():
            yield GaugeMetricFamily(name, text, value=value)


class Metrics:
    """The service's metrics. In multiprocess mode (the environment variable set before
    `prometheus_client` was imported) the values live in files shared by the workers; without it
    (an app built in-process, as a library user may), in this object's own registry."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self._own = None if self.multiprocess else CollectorRegistry()
        self.requests = Counter(
            "fashionrec_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self._own,
        )
        self.latency = Histogram(
            "fashionrec_request_duration_seconds",
            "Time from request to the end of the answer.",
            ["route"],
            buckets=BUCKETS,
            registry=self._own,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method_of(method), status_of(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self, gauges: Mapping[str, tuple[str, float]]) -> bytes:
        """The text exposition of every worker's counts; ``gauges`` maps a name to (help, value)."""
        registry = CollectorRegistry()
        if self.multiprocess:
            MultiProcessCollector(registry)
        else:
            registry.register(self.requests)
            registry.register(self.latency)
        registry.register(_Gauges(gauges))
        return generate_latest(registry)


class MetricsMiddleware:
    """Times every HTTP request and records its status (500 when the app raised)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = self.clock()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.observe(route_of(scope["path"]), scope["method"], status, self.clock() - start)
