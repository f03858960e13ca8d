"""File bodies that leave by zero-copy ``sendfile(2)`` where the server allows, else in bounded reads.

uvicorn has no zero-copy extension and uvloop does not implement ``loop.sendfile``, so the
gateway's own protocol (``gateway.serving``) offers one on plain-TCP connections through
:func:`offer_zerocopy`: the scope's ``extensions`` hold :data:`EXTENSION`, whose ``sendfile``
coroutine a response calls once its head has left. It is called, not sent as a message (as the
ASGI *Zero Copy Send* extension is), so no ``send`` of any other request passes through it.
The body is handed to the kernel with ``os.sendfile`` on a duplicate of the connection's
socket, from a thread of a bounded pool of its own (:data:`SENDFILE_THREADS`: the kernel's
copies then run on every core) or, when all of them are busy, driven by the event loop's
writability callbacks.

- A duplicate descriptor, never the transport's own number: if the connection is lost
  mid-send and the event loop closes its descriptor, the number can be reused by a new
  connection; the duplicate keeps pointing at this one, so bytes never reach another client.
- The transport's buffer is empty before the kernel writes, and nothing else writes until
  the body is done (the response is the connection's only writer while it is under way).
- Driven by the event loop, one ``sendfile`` call moves at most :data:`SENDFILE_CHUNK` bytes,
  then the loop runs other work, so a fast reader of a large blob never delays a manifest.
- A reader that accepts nothing for :data:`SEND_STALL_SECONDS` is disconnected.

Over TLS (no socket to write to), and under servers without the extension (tests' in-process
transports), :class:`FileResponse` reads :data:`READ_CHUNK` bytes at a time in a worker thread
and sends them with ordinary flow control: never the whole file in memory.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import weakref
from collections.abc import Callable
from typing import IO, Any

import anyio
import anyio.to_thread
from starlette.types import Receive, Scope, Send

log = logging.getLogger("gateway.blobresponse")

EXTENSION = "gateway.sendfile"
"""The scope extension: ``{"sendfile": async (fd, offset, count) -> bool}``, False once the connection is closed."""
SENDFILE_CHUNK = 4 << 20
"""Most bytes one ``sendfile`` call moves before other connections get a turn."""
READ_CHUNK = 256 << 10
"""Bytes read per step where zero-copy is not available."""
SEND_STALL_SECONDS = 60
"""A reader that accepts no byte for this long is disconnected."""
SENDFILE_THREADS = 64
"""Bodies sent at once from threads of their own (the kernel copies on every core, as Go's registry does);
beyond that, the event loop drives ``sendfile`` on writability."""


class FileResponse:
    """An ASGI response of ``length`` bytes of the open ``file`` from ``offset``; it closes the file.

    The caller opened the file (so a vanished one is its 404, not a broken response) and sets
    ``content-length`` itself; HEAD sends the head alone.
    """

    def __init__(
        self,
        file: IO[bytes],
        *,
        offset: int,
        length: int,
        status: int,
        headers: list[tuple[bytes, bytes]],
        on_sent: Any = None,
    ) -> None:
        self.file = file
        self.offset = offset
        self.length = length
        self.status = status
        self.headers = headers
        self.on_sent = on_sent  # called with the bytes handed to the server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            if scope["method"] == "HEAD" or self.length == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            offered = scope.get("extensions", {}).get(EXTENSION)
            if offered is None:
                await self._stream(send)
            elif await offered["sendfile"](self.file.fileno(), self.offset, self.length):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                return  # the connection is closed: the client left or stalled
            if self.on_sent is not None:
                self.on_sent(self.length)
        finally:
            self.file.close()

    async def _stream(self, send: Send) -> None:
        position, end, fd = self.offset, self.offset + self.length, self.file.fileno()
        while position < end:
            chunk = await anyio.to_thread.run_sync(os.pread, fd, min(READ_CHUNK, end - position), position)
            if not chunk:
                raise OSError(errno.EIO, f"file ended {end - position} bytes early")
            position += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": position < end})


def zerocopy_possible(transport: Any) -> bool:
    """Whether a connection can carry the extension: plain TCP, on a platform with ``os.sendfile``."""
    if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object") is not None:
        return False
    return transport.get_extra_info("socket") is not None and hasattr(os, "sendfile")


def offer_zerocopy(protocol: Any, cycle: Any) -> None:
    """Offer :data:`EXTENSION` on ``cycle``, a uvicorn request cycle on a connection where it is
    :func:`zerocopy_possible`."""
    cycle.scope.setdefault("extensions", {})[EXTENSION] = {"sendfile": _Sendfile(protocol, cycle)}


class _Sendfile:
    """Moves a response's body bytes from a file to its connection, after the head."""

    __slots__ = ("_cycle", "_protocol")

    def __init__(self, protocol: Any, cycle: Any) -> None:
        # The cycle's scope holds this: a weak reference back leaves no reference cycle per request,
        # so reference counting frees each one (the collector never has to).
        self._protocol = protocol
        self._cycle: Callable[[], Any] = weakref.ref(cycle)

    async def __call__(self, file_fd: int, offset: int, count: int) -> bool:
        """Send ``count`` bytes of ``file_fd`` from ``offset``; False if the connection is closed instead."""
        cycle = self._cycle()
        if cycle.disconnected:
            return False
        if not cycle.response_started or cycle.response_complete or cycle.chunked_encoding:
            raise RuntimeError(f"{EXTENSION} needs a started response with a Content-Length")
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if cycle.scope["method"] == "HEAD" or not count:
            return True
        if not await self._sendfile(file_fd, offset, count):
            return False
        cycle.expected_content_length -= count
        return True

    async def _sendfile(self, file_fd: int, offset: int, count: int) -> bool:
        """Send ``count`` bytes; False (the connection closed) when the client went away or stalled."""
        transport, cycle = self._protocol.transport, self._cycle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_STALL_SECONDS
        while transport.get_write_buffer_size():  # the head leaves the process before the body's bytes
            if transport.is_closing() or cycle.disconnected:
                return False
            if loop.time() > deadline:
                self._abort()
                return False
            await asyncio.sleep(0.001)
        sock = transport.get_extra_info("socket")
        fd = os.dup(sock.fileno())
        limiter = _sendfile_threads()
        if limiter.available_tokens >= 1:  # a thread of its own; when all are busy, the event loop drives it
            try:
                outcome = await anyio.to_thread.run_sync(
                    _blocking_sendfile, fd, file_fd, offset, count, lambda: cycle.disconnected, limiter=limiter
                )
            finally:
                os.close(fd)
            if outcome != "done":
                log.info("closed a connection mid-body: %s", outcome)
                self._abort()
            return outcome == "done"
        try:
            while count:
                if cycle.disconnected or transport.is_closing():
                    return False
                try:
                    sent = os.sendfile(fd, file_fd, offset, min(count, SENDFILE_CHUNK))
                except BlockingIOError:
                    if not await _writable(loop, fd):
                        log.info("closing a connection whose reader accepted nothing for %.0f s", SEND_STALL_SECONDS)
                        self._abort()
                        return False
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    self._abort()
                    return False
                if sent == 0:  # the file is shorter than promised: the response cannot be completed
                    log.warning("a file ended %d bytes before its Content-Length: connection closed", count)
                    self._abort()
                    return False
                offset += sent
                count -= sent
                if count:
                    await asyncio.sleep(0)  # others' turn
            return True
        finally:
            os.close(fd)

    def _abort(self) -> None:
        cycle = self._cycle()
        cycle.disconnected = True
        cycle.message_event.set()
        self._protocol.transport.close()


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    """Wait until ``fd`` can take bytes; False after :data:`SEND_STALL_SECONDS` without."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await asyncio.wait_for(ready, SEND_STALL_SECONDS)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_writer(fd)


_limiter: anyio.CapacityLimiter | None = None


def _sendfile_threads() -> anyio.CapacityLimiter:
    """The threads blob bodies are sent from: their own pool, so they never hold up the store's or file reads'."""
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(SENDFILE_THREADS)
    return _limiter


def _blocking_sendfile(fd: int, file_fd: int, offset: int, count: int, gone: Callable[[], bool]) -> str:
    """``count`` bytes of ``file_fd`` to the socket ``fd`` (non-blocking), waiting for room with ``poll``.

    Returns ``done``, or why not: ``gone`` (the client left), ``stalled`` (it took nothing for
    :data:`SEND_STALL_SECONDS`), ``short`` (the file ended early).
    """
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    idle = 0
    while count:
        try:
            sent = os.sendfile(fd, file_fd, offset, min(count, SENDFILE_CHUNK))
        except BlockingIOError:
            if gone():
                return "gone"
            if not poller.poll(1000):
                idle += 1
                if idle >= SEND_STALL_SECONDS:
                    return "stalled"
            continue
        except OSError:
            return "gone"
        if sent == 0:
            return "short"
        idle = 0
        offset += sent
        count -= sent
    return "done"
