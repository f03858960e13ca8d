"""A gateway that could not start answers every request with why, in one line."""

from __future__ import annotations

from typing import Any


class StartupRefusalMiddleware:
    """Report a start the gateway refuses (``app.state.startup_refusal``) as that one line, not
    the traceback Starlette hands the server; other startup failures keep their traceback."""

    def __init__(self, app: Any, app_state: Any) -> None:
        self.app = app
        self.app_state = app_state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def reworded(message: Any) -> None:
            refusal = getattr(self.app_state, "startup_refusal", None)
            if message["type"] == "lifespan.startup.failed" and refusal:
                message = {**message, "message": refusal}
            await send(message)

        await self.app(scope, receive, reworded)
