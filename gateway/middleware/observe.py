"""Every request is observable: an id, echoed in ``X-Request-Id`` and carried by every log line it
causes, and a duration per route template, method and status
(``preheat_gateway_http_request_duration_seconds``).

One middleware does both because both wrap every response's ``send`` the same way, and a status
poll pays for each wrapper layer (docs/design.md, "Status polling").
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Iterable, Iterator

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import DISCONNECT_LOGGED, REQUEST_ID_PATTERN, request_id
from gateway.metrics import CLIENT_CLOSED, Metrics

log = logging.getLogger("gateway.http")


def request_ids() -> Iterator[str]:
    """32 hex digits each: 20 random per process, then a count, so ids differ across replicas and
    restarts without a system call per request."""
    prefix = os.urandom(10).hex()
    return (f"{prefix}{n:012x}" for n in itertools.count())


class ObserveMiddleware:
    """Gives every request an id (the caller's ``X-Request-Id`` when sane), echoed and logged, and
    times it under its route template (``/oapi/v1/jobs/{id:int}``), never its raw path.

    A client that hangs up before its request body is complete is an ordinary event, not an
    error: it is logged once at INFO, one line, never as a traceback (the server may already
    have logged it, with the reason it closed the connection), and counted under status 499.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.ids = request_ids()
        self.templates: dict[object, str] = {route.endpoint: route.path for route in routes if isinstance(route, Route)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        current = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                current = given if REQUEST_ID_PATTERN.fullmatch(given) else ""
                break
        current = current or next(self.ids)
        header = (b"x-request-id", current.encode())
        token = request_id.set(current)
        status = 500

        def observed(message: Message) -> Awaitable[None]:  # send's own awaitable: no coroutine per message
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            return send(message)

        try:
            await self.app(scope, receive, observed)
        except ClientDisconnect:
            status = CLIENT_CLOSED  # the client hung up mid-request: not a server error
            if not scope.get("state", {}).get(DISCONNECT_LOGGED):
                log.info(
                    "client went away before its request body was complete (%s %s)",
                    scope["method"],
                    scope["path"][:200],
                )
        finally:
            self._observe(scope, status, time.perf_counter() - started)
            request_id.reset(token)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = self.templates.get(scope.get("endpoint"), "other")
        if route == "other" and scope["path"].startswith("/console"):
            route = "/console"
        self.metrics.http_duration.labels(route, scope["method"], str(status)).observe(seconds)
