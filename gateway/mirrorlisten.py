"""``server.mirror_listen``: the registry mirror on an address of its own, in the same process.

A second listening socket in the same event loop, opened once the application has started
(its lifespan) and closed before the application stops. Its connections run the same guarded
protocol as the API's (``gateway.serving``: deadlines, head cap, connection cap, zero-copy
bodies) with a guard of their own, and every request it accepts is marked in its scope
(``gateway.endpoints.mirror.MIRROR_LISTENER``) so the application serves it the mirror only,
and the API listener the API only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from gateway.endpoints.mirror import MIRROR_LISTENER
from gateway.serving import Limits, protocol_class

log = logging.getLogger("gateway.serving")

STOP_SECONDS = 10.0
"""How long blobs under way may take to finish once the gateway stops."""


class MirrorListener:
    """The mirror's own listener; :func:`with_mirror_listener` ties it to the application's lifespan."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        limits: Limits,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.protocol = protocol_class(limits)
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=self.protocol,
            ws="none",
            lifespan="off",
            limit_concurrency=None,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            log_config=None,
            access_log=False,
            server_header=False,
        )
        self.limits = limits
        self.state = ServerState()
        self.server: asyncio.Server | None = None

    async def start(self, app_state: dict[str, Any]) -> None:
        """Listen; each request's state starts as ``app_state`` (the application's lifespan state)."""
        config = self.config
        if not config.loaded:
            config.load()
        factory = functools.partial(
            self.protocol, config=config, server_state=self.state, app_state={**app_state, MIRROR_LISTENER: True}
        )
        self.server = await asyncio.get_running_loop().create_server(
            factory,
            host=config.host,
            port=config.port,
            ssl=config.ssl,
            backlog=2048,
            # asyncio refuses a handshake timeout without TLS; None is its default there
            ssl_handshake_timeout=self.limits.header_timeout if config.ssl is not None else None,
        )
        log.info(
            "serving the registry mirror on %s://%s:%d", "https" if config.ssl else "http", config.host, config.port
        )

    async def stop(self) -> None:
        """Stop accepting, let requests under way finish (at most :data:`STOP_SECONDS`), close the rest."""
        if self.server is None:
            return
        self.server.close()
        for connection in list(self.state.connections):
            connection.shutdown()
        deadline = time.monotonic() + STOP_SECONDS
        while (self.state.connections or self.state.tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.state.connections):
            connection.transport.close()
        self.server = None


def with_mirror_listener(app: Any, listener: MirrorListener) -> Any:
    """``app`` whose lifespan opens ``listener`` once the application started, and closes it first at shutdown."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def on_receive() -> Any:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await listener.stop()
            return message

        async def on_send(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await listener.start(scope.get("state", {}))
                except OSError as error:
                    message = {
                        "type": "lifespan.startup.failed",
                        "message": f"cannot listen on server.mirror_listen {listener.config.host}:{listener.config.port}: {error.strerror}",
                    }
            await send(message)

        await app(scope, on_receive, on_send)

    return wrapped
