"""uvicorn's httptools protocol, sending a response's head and body in one write.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and
the body when it sends ``http.response.body``: two ``send()`` calls per response. On
loopback each one runs the receiver's network stack and wakes it; under load the woken
client can take the core from the gateway between head and body, and every request it
serves afterwards waits for the core to come back. Holding the head until the body arrives
(almost always in the same turn of the event loop) halves the sends and the wake-ups.

A held head is never kept past the loop's next turn, so a streamed response whose first
chunk comes later still shows its head at once; closing the connection sends it first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneSendTransport:
    """A transport that holds a response head until the next write, or the loop's next turn."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held:
            held, self._held = self._held, b""
            self._transport.write(b"".join((held, data)))
        elif data[:7] == b"HTTP/1." and data[-4:] == b"\r\n\r\n":  # a status line and headers
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, pieces: Any) -> None:
        self.write(b"".join(pieces))  # behind a held head, not past it

    def flush(self) -> None:
        held, self._held = self._held, b""
        if held and not self._transport.is_closing():  # a lost connection drops it, as it would have
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)  # reading flow control, extra info, abort: as they are


class OneSendHttpProtocol(HttpToolsProtocol):
    """Pass as uvicorn's ``http`` protocol class."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneSendTransport(transport, self.loop))  # type: ignore[arg-type]
