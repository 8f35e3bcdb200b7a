"""Prometheus metrics of the server (official ``prometheus_client``, one registry per app).

Exposed at ``GET /metrics``:

- ``mlbuild_requests_total{route,method,status}``: HTTP requests by route template and status;
  those the HTTP layer refuses before any route sees them (a malformed request, headers over the
  limit, a stalled request) as ``route="unparsed", method="other"``
- ``mlbuild_request_duration_seconds{route}``: latency histogram by route template
- ``mlbuild_requests_in_flight``: HTTP requests being handled now (not counting the scrape)
- ``mlbuild_batch_size``: rows per forward pass (histogram)
- ``mlbuild_inference_duration_seconds``: forward pass + postprocess per batch (histogram)
- ``mlbuild_model_load_seconds``, ``mlbuild_model_ready``
- ``mlbuild_model_info{model,model_hash,data_hash,code_hash,toolchain}``: the package's hashes
- ``process_*``: the process collector (CPU, memory, file descriptors)

``MetricsMiddleware`` is a plain ASGI middleware (no per-request Starlette objects); it labels
requests by the matched route's path template, so label values stay bounded.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, MutableMapping

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServerMetrics", "MetricsMiddleware", "CONTENT_TYPE_LATEST"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """The server's metric objects, registered in their own ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mlbuild_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("mlbuild_request_duration_seconds", "HTTP request latency by route template",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("mlbuild_requests_in_flight", "HTTP requests being handled", registry=r)
        # The gauge's value, read when scraped: a count the event loop changes (every change is made
        # there), where the gauge's own inc and dec took a lock and two checks each (~0.9 us a request).
        self.in_flight_now = 0
        self.in_flight.set_function(lambda: self.in_flight_now)
        self.batch_size = Histogram("mlbuild_batch_size", "Rows per forward pass", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.inference = Histogram("mlbuild_inference_duration_seconds",
                                   "Forward pass and postprocessing time per batch",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.load_seconds = Gauge("mlbuild_model_load_seconds", "Time to load and warm up the model", registry=r)
        self.ready = Gauge("mlbuild_model_ready", "1 when the model is loaded and the server is not draining",
                           registry=r)
        self.info = Info("mlbuild_model", "The served package and its content hashes", registry=r)
        if process:
            ProcessCollector(registry=r)
        self._children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def set_package(self, name: str, hashes: dict[str, str]) -> None:
        self.info.info({
            "model": name,
            "model_hash": hashes.get("model", ""),
            "data_hash": hashes.get("data", ""),
            "code_hash": hashes.get("code", ""),
            "toolchain": hashes.get("toolchain", ""),
        })

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.inference.observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        hist = self._latency_children.get(route)
        if hist is None:
            hist = self._latency_children[route] = self.latency.labels(route)
        hist.observe(seconds)

    def refused(self, status: int) -> None:
        """Count a request the HTTP layer refused before it reached the app (400, 408, 431)."""
        self.requests.labels("unparsed", "other", str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts, times and gauges every HTTP request; labels it by Starlette's matched route."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        # A scrape is not a request being served: counted, it made an idle server read 1 in flight.
        counted = scope.get("path") != "/metrics"
        if counted:
            self.metrics.in_flight_now += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if counted:
                self.metrics.in_flight_now -= 1
            route = scope.get("route")
            template = getattr(route, "path", None) if route is not None else None
            method = scope.get("method", "")
            if method not in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"):
                method = "other"
            self.metrics.observe_request(template or "unmatched", method, status, time.perf_counter() - started)
