"""A raw TCP server on 127.0.0.1 for tests that must control every byte of an HTTP answer.

Real registries always answer well; these tests need the malformed, cut-short or corrupt
answers a broken server or cache in between would give.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` on a free loopback port; yields the server's base URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_head(reader: asyncio.StreamReader) -> list[str]:
    return (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")


def answering(raw: bytes, heads: list[str] | None = None) -> Handler:
    """A handler that reads the request head (kept in ``heads``), writes ``raw`` and hangs up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if heads is not None:
            heads.extend(head)
        writer.write(raw)
        await writer.drain()
        writer.close()

    return answer
