"""Every request gets an id, echoed in ``X-Request-Id`` and carried by every log line it causes."""

from __future__ import annotations

import logging
import os

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import DISCONNECT_LOGGED, REQUEST_ID_PATTERN, request_id

log = logging.getLogger("gateway.http")


class RequestIdMiddleware:
    """Gives every request an id (the caller's ``X-Request-Id`` when sane), echoed and logged.

    A client that hangs up before its request body is complete is an ordinary event, not an
    error: it is logged once at INFO, one line, never as a traceback (the server may already
    have logged it, with the reason it closed the connection).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        current = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                current = given if REQUEST_ID_PATTERN.fullmatch(given) else ""
                break
        current = current or os.urandom(16).hex()  # as uuid4().hex, without building a UUID per request
        header = (b"x-request-id", current.encode())
        token = request_id.set(current)

        async def stamp(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, stamp)
        except ClientDisconnect:
            if not scope.get("state", {}).get(DISCONNECT_LOGGED):
                log.info(
                    "client went away before its request body was complete (%s %s)",
                    scope["method"],
                    scope["path"][:200],
                )
        finally:
            request_id.reset(token)
