"""A gateway that could not start answers every request with why, in one line."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any


class StartupRefusalMiddleware:
    """Report a start the gateway refuses (``app.state.startup_refusal``) as that one line, not
    the traceback Starlette hands the server; other startup failures keep their traceback.

    Only the lifespan passes through here: any other scope gets the inner application's own
    awaitable, so a request pays a call, not a coroutine of this middleware's."""

    def __init__(self, app: Any, app_state: Any) -> None:
        self.app = app
        self.app_state = app_state

    def __call__(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] != "lifespan":
            awaitable: Awaitable[None] = self.app(scope, receive, send)
            return awaitable
        return self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        async def reworded(message: Any) -> None:
            refusal = getattr(self.app_state, "startup_refusal", None)
            if message["type"] == "lifespan.startup.failed" and refusal:
                message = {**message, "message": refusal}
            await send(message)

        await self.app(scope, receive, reworded)
