"""The HTTP server the gateway runs: uvicorn's httptools protocol, guarded against peers that
never finish a request.

A peer that has not authenticated yet can still open connections and dribble bytes. uvicorn
alone times out only a kept-alive connection, never a fresh one or a slow request, has no limit
on a request head (httptools buffers a header of any size) and counts idle connections against
``limit_concurrency``, so 4,096 silent sockets made every probe answer 503. Here:

* every connection is in one phase: ``IDLE`` (kept alive, no byte of a next request),
  ``HEAD`` (a request head is arriving; a fresh connection starts here), ``BODY`` (its body is
  arriving) or ``BUSY`` (the application has the whole request). Each phase but ``BUSY`` has a
  deadline (``keep_alive``, ``header_timeout``, ``body_timeout``); when it passes, the connection
  is closed, after a 408 when a request was under way. One timer per connection is armed only
  when a deadline moves earlier; a timer that fires early re-arms itself, so the per-request cost
  is a clock read and a comparison, never a timer per chunk;
* a request line plus headers larger than ``max_header_bytes`` is answered 431 and closed
  before it is buffered whole;
* open connections are capped (``max_connections``): at the cap, the connection that has waited
  longest without sending a complete request head is closed, so a fresh request still gets in;
  the in-flight *request* limit (``max_in_flight``) is what answers 503, never idle sockets;
* over TLS the handshake has the header deadline too;
* on SIGTERM the server first *drains* (:class:`GuardedServer`): for ``shutdown_delay`` seconds it
  keeps serving, every response says ``Connection: close`` and the application is told (its
  ``/readyz`` turns 503), so a load balancer moves clients elsewhere before the listener closes;
  then it stops accepting, answers every request under way (a request head already arriving
  included), closes idle connections and lets the application hand its work back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import httptools
import msgspec
import uvicorn
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.blobresponse import offer_zerocopy, zerocopy_possible
from gateway.logs import DISCONNECT_LOGGED

log = logging.getLogger("gateway.serving")

IDLE, HEAD, BODY, BUSY, LINGER = 0, 1, 2, 3, 4
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
"""After a refusal (408, 431, 503) the connection is read and discarded for at most this long and
this many bytes before it is closed, so the client reads the answer instead of a reset."""
FD_RESERVE = 512
"""File descriptors kept for the store, outgoing fetches and the cache when capping connections."""
WARN_EVERY_SECONDS = 10.0
DRAIN_FIRST_BYTE_SECONDS = 1.0
"""When the listener closes, a connection accepted but still silent has this long to start its request."""


@dataclass(frozen=True)
class Limits:
    """What one connection may take before the server closes it (see ``ServerConfig``)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 65.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 10_000
    max_in_flight: int = 4096

    @classmethod
    def from_config(cls, server: Any) -> Limits:
        return cls(
            header_timeout=server.header_timeout_seconds,
            body_timeout=server.body_timeout_seconds,
            keep_alive=server.keep_alive_seconds,
            max_header_bytes=server.max_header_bytes,
            max_connections=server.max_connections,
            max_in_flight=server.max_in_flight_requests,
        )


class _Guard:
    """State shared by one server's connections: those still owing a request head, oldest first."""

    def __init__(self) -> None:
        self.waiting: dict[GuardedHttpProtocol, None] = {}
        self.closing = 0  # evicted or refused, closed but not yet lost
        self.draining = False  # shutting down: every response closes its connection
        self._warned: dict[str, float] = {}

    def warn(self, key: str, message: str, *args: object) -> None:
        """A warning at most every :data:`WARN_EVERY_SECONDS` per kind: a flood must not flood the log."""
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= WARN_EVERY_SECONDS:
            self._warned[key] = now
            log.warning(message, *args)


def _response(status: int, reason: str, message: str) -> bytes:
    body = msgspec.json.encode({"errors": message})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines, a head size cap and a connection cap.

    Use :func:`protocol_class` to bind :class:`Limits`; uvicorn constructs one per connection.
    """

    limits: ClassVar[Limits] = Limits()

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limit_concurrency = None  # in-flight requests are limited below, idle connections never
        guard = server_state.__dict__.get("gateway_guard")
        if guard is None:
            guard = server_state.gateway_guard = _Guard()  # GuardedServer makes it first; plain uvicorn here
        self._guard: _Guard = guard
        self._phase = HEAD
        self._head_bytes = 0
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._closing = False
        self._zerocopy = False  # known once connected (connection_made)
        limits = self.limits
        self._max_head, self._body_timeout, self._max_in_flight = (
            limits.max_header_bytes,
            limits.body_timeout,
            limits.max_in_flight,
        )

    # --- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._zerocopy = zerocopy_possible(transport)
        guard = self._guard
        if len(self.connections) - guard.closing > self.limits.max_connections and not self._evict_oldest():
            guard.warn(
                "full",
                "%d connections are open and every one is in a request: refusing new ones (server.max_connections)",
                len(self.connections),
            )
            self._close(_response(503, "Service Unavailable", "too many connections; retry shortly"))
            return
        guard.waiting[self] = None
        self._set_deadline(self.loop.time() + self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.waiting.pop(self, None)
        if self._closing:
            self._closing = False
            self._guard.closing -= 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self._phase == BODY:
            scope = cycle.scope
            log.info(
                "client %s went away before its request body was complete (%s %s)",
                _peer(self.client),
                scope.get("method", "?"),
                scope.get("path", "?")[:200],
            )
            scope["state"][DISCONNECT_LOGGED] = True
        super().connection_lost(exc)

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest without a complete request head."""
        for oldest in self._guard.waiting:
            log.debug(
                "closing %s, the oldest connection without a request head (server.max_connections)",
                _peer(oldest.client),
            )
            oldest._close(b"")
            return True
        return False

    def _close(self, response: bytes) -> None:
        """Close, after ``response`` if nothing else is writing; a running request sees a disconnect.

        With a response, the connection lingers (input discarded, at most :data:`LINGER_SECONDS`
        and :data:`LINGER_BYTES`) so that unread input does not turn the close into a reset that
        would destroy the answer before the client reads it.
        """
        self._guard.waiting.pop(self, None)
        if not self._closing:
            self._closing = True
            self._guard.closing += 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                response = b""
            cycle.disconnected = True  # the application's sends are dropped, its receive says disconnect
            cycle.scope["state"][DISCONNECT_LOGGED] = True
            cycle.message_event.set()
        transport = self.transport
        if not response or transport.is_closing():
            self._phase, self._deadline = BUSY, math.inf
            transport.close()
            return
        transport.write(response)
        self._phase, self._head_bytes = LINGER, 0
        self.flow.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._set_deadline(self.loop.time() + LINGER_SECONDS)

    # --- deadlines --------------------------------------------------------------------------

    def _set_deadline(self, when: float) -> None:
        self._deadline = when
        if when < self._timer_at:  # only a deadline that moves earlier re-arms the timer
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self._phase == BUSY or self.transport.is_closing():  # the application has the request: no deadline
            return
        if self.loop.time() < self._deadline:
            self._set_deadline(self._deadline)
            return
        phase, limits, peer = self._phase, self.limits, _peer(self.client)
        if phase == LINGER:
            self.transport.close()
        elif phase == IDLE:
            log.debug("closing %s: kept alive %.0f s without a request", peer, limits.keep_alive)
            self._close(b"")
        elif phase == HEAD and self._head_bytes == 0:
            log.debug("closing %s: no request within %.0f s of connecting", peer, limits.header_timeout)
            self._close(b"")
        elif phase == HEAD:
            message = f"request head not complete within {limits.header_timeout:g} s (server.header_timeout_seconds)"
            log.info("closing %s: %s", peer, message)
            self._close(_response(408, "Request Timeout", message))
        else:
            message = f"request body not complete within {limits.body_timeout:g} s (server.body_timeout_seconds)"
            log.info("closing %s: %s", peer, message)
            self._close(_response(408, "Request Timeout", message))

    # --- reading ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase <= HEAD or phase == BUSY:  # these bytes belong to a request head
            if phase != HEAD:  # ... and begin it: a kept-alive (or pipelining) connection's next request
                self._phase = HEAD
                self._head_bytes = 0
                self._set_deadline(self.loop.time() + self.limits.header_timeout)
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._head_over_budget(data)
                return
        elif phase == LINGER:  # refused: read and drop, within bounds
            self._head_bytes += len(data)
            if self._head_bytes > LINGER_BYTES:
                self.transport.close()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, without its per-chunk keep-alive timer bookkeeping."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            message = "Invalid HTTP request received."
            self.logger.info("%s from %s", message, _peer(self.client))
            self.send_400_response(message)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def eof_received(self) -> None:
        """The client is done sending: a refused connection can close now."""
        if self._phase == LINGER:
            self.transport.close()

    def _head_over_budget(self, data: bytes) -> None:
        """Parse only what fits in the budget: if the head ends there, the rest is body; else 431."""
        fits = len(data) - (self._head_bytes - self._max_head)
        if fits > 0:
            self._feed(data[:fits])
            if self.transport.is_closing():
                return
            if self._phase in (BODY, BUSY):
                self.data_received(data[fits:])
                return
        message = f"request line and headers exceed {self.limits.max_header_bytes} bytes (server.max_header_bytes)"
        log.info("refused a request from %s: %s", _peer(self.client), message)
        self._close(_response(431, "Request Header Fields Too Large", message))

    def on_headers_complete(self) -> None:
        self._guard.waiting.pop(self, None)
        self._phase = BODY
        self._head_bytes = 0
        self._deadline = when = self.loop.time() + self._body_timeout
        if when < self._timer_at:
            self._arm(when)
        if len(self.tasks) < self._max_in_flight:
            HttpToolsProtocol.on_headers_complete(self)
        else:
            self._guard.warn(
                "in_flight", "%d requests in flight: answering 503 (server.max_in_flight_requests)", len(self.tasks)
            )
            app, self.app = self.app, service_unavailable
            try:
                HttpToolsProtocol.on_headers_complete(self)
            finally:
                self.app = app
        if self._guard.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, so the client reconnects elsewhere

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._phase = BUSY

    def on_response_complete(self) -> None:
        """uvicorn's, with this protocol's keep-alive deadline instead of its own timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        if self._phase != BODY:
            self._guard.waiting[self] = None
        if self._phase == BUSY:
            self._phase = IDLE
            self._set_deadline(self.loop.time() + self.limits.keep_alive)

    def shutdown(self) -> None:
        """The listener has closed: answer what is under way, close what is idle.

        uvicorn closes every connection without a request in progress, which drops a request
        head already on its way; here such a connection is answered (``on_headers_complete``
        drops keep-alive while draining), and a fresh one that sent nothing yet gets
        :data:`DRAIN_FIRST_BYTE_SECONDS` to start, within its header deadline.
        """
        if self._phase == LINGER or self.transport.is_closing():
            return
        if self._phase == HEAD:
            if self._head_bytes == 0:
                self._set_deadline(min(self._deadline, self.loop.time() + DRAIN_FIRST_BYTE_SECONDS))
            return
        super().shutdown()

    def _unsupported_upgrade_warning(self) -> None:
        self.logger.debug("ignored an Upgrade request (the gateway serves no WebSockets)")

    # --- zero-copy file bodies (gateway.blobresponse) ----------------------------------------

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """uvicorn's, with the ASGI zero-copy send extension offered on plain-TCP connections."""
        if self._zerocopy:
            offer_zerocopy(self, cycle)
        super()._start_asgi_task(cycle, app)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def protocol_class(limits: Limits) -> type[GuardedHttpProtocol]:
    """:class:`GuardedHttpProtocol` bound to ``limits``, to pass as uvicorn's ``http``."""
    return type("GatewayHttpProtocol", (GuardedHttpProtocol,), {"limits": limits, "__module__": __name__})


def raise_fd_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, error)
    return soft


def fit_to_fd_limit(limits: Limits, fd_limit: int) -> Limits:
    """``limits`` with ``max_connections`` lowered to what the open-file limit allows."""
    room = max(64, fd_limit - FD_RESERVE)
    if fd_limit == resource.RLIM_INFINITY or limits.max_connections <= room:
        return limits
    log.warning(
        "server.max_connections %d is above what the open-file limit (%d) allows: using %d",
        limits.max_connections,
        fd_limit,
        room,
    )
    return Limits(**{**limits.__dict__, "max_connections": room})


class GuardedServer(uvicorn.Server):
    """uvicorn's server, whose TLS listeners give a handshake ``handshake_timeout`` seconds, and
    which drains for ``shutdown_delay`` seconds (calling ``on_drain`` first) before it stops accepting.

    The order on SIGTERM is what keeps a rolling restart behind a load balancer free of failed
    requests: readiness false while still serving, then stop accepting and finish what is in
    flight (uvicorn's graceful shutdown, ``timeout_graceful_shutdown``), then the application's
    lifespan shutdown. A second signal skips what is left of the delay.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        handshake_timeout: float,
        *,
        shutdown_delay: float = 0.0,
        on_drain: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.handshake_timeout = handshake_timeout
        self.shutdown_delay = shutdown_delay
        self.on_drain = on_drain
        self.guard = self.server_state.gateway_guard = _Guard()  # type: ignore[attr-defined]
        self._hurry = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self._hurry = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.drain()
        await super().shutdown(sockets)

    async def drain(self) -> None:
        """Serve on with ``Connection: close`` for ``shutdown_delay`` seconds, the application told first."""
        self.guard.draining = True
        for connection in list(self.server_state.connections):  # responses not yet started close too
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
        if self.on_drain is not None:
            self.on_drain()
        if self.shutdown_delay <= 0:
            return
        log.info(
            "shutting down: /readyz answers 503 for %g s before the listener closes (server.shutdown_delay_seconds)",
            self.shutdown_delay,
        )
        loop = asyncio.get_running_loop()
        until, ticks = loop.time() + self.shutdown_delay, 0
        while not (self._hurry or self.force_exit) and (left := until - loop.time()) > 0:
            await asyncio.sleep(min(0.1, left))
            ticks += 1
            await self.on_tick(ticks)  # keeps the Date header current; its answer (exit) is known

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.config.ssl is None:  # ``load()`` has run: serve() loads the config first
            await super().startup(sockets)
            return
        loop = asyncio.get_running_loop()
        # uvicorn has no handshake-timeout option: its one create_server call gets the keyword here.
        loop.create_server = functools.partial(loop.create_server, ssl_handshake_timeout=self.handshake_timeout)  # type: ignore[method-assign]
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server


def guarded_server(
    app: Any,
    *,
    host: str,
    port: int,
    limits: Limits,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    shutdown_delay: float = 0.0,
    on_drain: Callable[[], None] | None = None,
    **options: Any,
) -> GuardedServer:
    """``app`` on the guarded protocol (never h11, never WebSockets), ready to ``run()``.

    On SIGTERM ``on_drain`` is called and requests are served ``shutdown_delay`` more seconds (see :class:`GuardedServer`).
    """
    limits = fit_to_fd_limit(limits, raise_fd_limit())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        http=protocol_class(limits),
        ws="none",
        limit_concurrency=None,
        timeout_keep_alive=math.ceil(limits.keep_alive),
        **options,
    )
    return GuardedServer(
        config, handshake_timeout=limits.header_timeout, shutdown_delay=shutdown_delay, on_drain=on_drain
    )
