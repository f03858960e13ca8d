"""Request durations per route template, method and status (``preheat_gateway_http_request_duration_seconds``)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Histogram
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import CLIENT_CLOSED, Metrics


class HTTPMetricsMiddleware:
    """Times every request under its route template (``/oapi/v1/jobs/{id:int}``), never its raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self._timers: dict[tuple[str, str, int], Histogram] = {}
        self.templates: dict[object, str] = {route.endpoint: route.path for route in routes if isinstance(route, Route)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        except ClientDisconnect:
            status = CLIENT_CLOSED  # the client hung up mid-request: not a server error
            raise
        finally:
            route = self.templates.get(scope.get("endpoint"), "other")
            if route == "other" and scope["path"].startswith("/console"):
                route = "/console"
            key = (route, scope["method"], status)
            timer = self._timers.get(key)
            if timer is None:  # labels() costs more than the observation; the keys are bounded as the labels are
                timer = self._timers[key] = self.metrics.http_duration.labels(route, scope["method"], str(status))
            timer.observe(time.perf_counter() - started)
