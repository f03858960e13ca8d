"""With ``server.mirror_listen``, the mirror answers only on its listener and the API only on ``listen``
(the app adds this middleware only then)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import is_mirror_path
from gateway.endpoints.mirror import MIRROR_LISTENER, oci_error


class ListenerSplitMiddleware:
    """With ``server.mirror_listen``, the mirror is served only there and the API only on ``listen``.

    A request is on the mirror's listener when the server marked its scope (:data:`MIRROR_LISTENER`,
    set by ``gateway.mirrorlisten``); the wrong listener answers 404 before authentication.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            on_mirror = bool(scope.get("state", {}).get(MIRROR_LISTENER))
            if on_mirror != is_mirror_path(scope["path"]):
                response = (
                    oci_error(404, "NAME_UNKNOWN", "this address serves the registry mirror only (/v2/)")
                    if on_mirror
                    else Response(b'{"errors":"not found"}', status_code=404, media_type="application/json")
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
