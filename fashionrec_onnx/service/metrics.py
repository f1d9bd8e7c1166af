"""Prometheus metrics of one worker process, written as text by hand (no client library needed):
requests by route and status, a latency histogram by route, and the catalog's item count.

Route labels are the route templates, never the requested path, so a caller cannot grow the
label set. With several workers each keeps its own counts (a scrape reaches one of them).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

from .upload_guard import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROUTES = ("/search", "/health", "/metrics", "/docs", "/openapi.json")


def route_of(path: str) -> str:
    if path in ROUTES:
        return path
    return "/items/{key}" if path.startswith("/items/") else "other"


class Metrics:
    """Counts kept in the event loop's thread (the middleware runs there), so no lock."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.buckets: dict[str, list[int]] = {}
        self.sums: defaultdict[str, float] = defaultdict(float)
        self.counts: Counter[str] = Counter()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[route, method, status] += 1
        counts = self.buckets.setdefault(route, [0] * len(BUCKETS))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        self.sums[route] += seconds
        self.counts[route] += 1

    def render(self, gauges: Mapping[str, tuple[str, float]]) -> str:
        """The text exposition format; ``gauges`` maps a name to (help, value)."""
        lines = [
            "# HELP fashionrec_requests_total HTTP requests answered, by route, method and status.",
            "# TYPE fashionrec_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            lines.append(
                f'fashionrec_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}'
            )
        lines += [
            "# HELP fashionrec_request_duration_seconds Time from request to the end of the answer.",
            "# TYPE fashionrec_request_duration_seconds histogram",
        ]
        for route in sorted(self.buckets):
            for bound, n in zip(BUCKETS, self.buckets[route]):
                lines.append(
                    f'fashionrec_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} {n}'
                )
            total = self.counts[route]
            lines.append(f'fashionrec_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {total}')
            lines.append(f'fashionrec_request_duration_seconds_sum{{route="{route}"}} {self.sums[route]:.6f}')
            lines.append(f'fashionrec_request_duration_seconds_count{{route="{route}"}} {total}')
        for name, (text, value) in gauges.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


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
