"""``server.root_path``: the same routes whether or not a reverse proxy strips the prefix."""

from __future__ import annotations

from typing import Any


class PathPrefixMiddleware:
    """Serve under ``server.root_path`` whether or not the reverse proxy strips the prefix.

    Harbor appends its paths to the endpoint it was given (``https://gw/harbor/healthy``); a
    proxy may forward that path as is or strip ``/harbor``. Both reach the same routes.
    """

    def __init__(self, app: Any, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path == self.root_path or path.startswith(self.root_path + "/"):
                scope = {**scope, "root_path": self.root_path}
        await self.app(scope, receive, send)
