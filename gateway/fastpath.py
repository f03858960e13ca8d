"""The status-polling fast path: finished jobs served from pre-encoded bytes.

Harbor polls every task every 10 s, so a policy over a thousand tags is a thousand pollers
asking about jobs that, once finished, never change. This pure ASGI layer answers such a
poll before the rest of the stack runs: if the job's bytes are cached (``Gateway.rendered``)
and the caller's credential was verified moments ago (the authenticator's short cache), the
bytes go out at once. Anything else (a pending job, an unknown or unverified credential, any
other route) falls through to the normal stack, which verifies and renders as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.ids import ascii_number

if TYPE_CHECKING:
    from gateway.app import Gateway

# route prefix -> (dialect key of Gateway.rendered, route template for metrics)
STATUS_ROUTES = {
    "/oapi/v1/jobs/": ("openapi", "/oapi/v1/jobs/{id:int}"),
    "/preheats/": ("legacy", "/preheats/{id}"),
}


class FastStatusMiddleware:
    def __init__(self, app: ASGIApp, gateway: Callable[[], Gateway]) -> None:
        self.app = app
        self.gateway = gateway
        self._timers: dict[str, Histogram] = {}  # the labelled histogram per route, looked up once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            started = time.perf_counter()
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            prefix, _, job_id = path.rpartition("/")
            target = STATUS_ROUTES.get(prefix + "/")
            if target is not None and (number := ascii_number(job_id)) is not None:
                gateway = self.gateway()
                body = gateway.rendered.get((target[0], number))
                if body is not None and gateway.auth.quick(scope["headers"]):
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    timer = self._timers.get(target[1])
                    if timer is None:
                        timer = self._timers[target[1]] = gateway.metrics.http_duration.labels(target[1], "GET", "200")
                    timer.observe(time.perf_counter() - started)
                    return
        await self.app(scope, receive, send)
