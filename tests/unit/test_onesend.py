"""The one-send protocol: a response's head goes out with its body, never later than the loop's next turn."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.onesend import OneSendHttpProtocol, OneSendTransport
from tests.registry import _SigningIdentity

pytestmark = pytest.mark.anyio
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorded:
    """The transport under the one-send one: what reached the socket, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed


def one_send() -> tuple[OneSendTransport, Recorded]:
    under = Recorded()
    return OneSendTransport(under, asyncio.get_running_loop()), under  # type: ignore[arg-type]


async def test_a_head_and_its_body_leave_in_one_write() -> None:
    transport, under = one_send()
    transport.write(HEAD)
    assert transport.get_write_buffer_size() == len(HEAD)
    transport.write(b"{}")
    assert under.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)
    assert under.writes == [HEAD + b"{}"]


async def test_a_body_written_in_pieces_follows_its_head() -> None:
    transport, under = one_send()
    transport.write(HEAD)
    transport.writelines([b"{", b"}"])
    assert under.writes == [HEAD + b"{}"]


async def test_a_head_whose_body_is_late_leaves_on_the_next_turn_of_the_loop() -> None:
    transport, under = one_send()
    transport.write(HEAD)
    assert under.writes == []
    await asyncio.sleep(0)
    assert under.writes == [HEAD]
    transport.write(b"{}")
    assert under.writes == [HEAD, b"{}"]


async def test_closing_sends_a_held_head_first() -> None:
    transport, under = one_send()
    transport.write(HEAD)
    transport.close()
    assert under.writes == [HEAD] and under.closed
    assert transport.is_closing()


async def test_a_head_held_when_the_connection_is_lost_is_dropped() -> None:
    transport, under = one_send()
    transport.write(HEAD)
    under.closed = True  # the peer went away meanwhile
    await asyncio.sleep(0)
    assert under.writes == []


async def test_anything_but_a_head_is_written_at_once() -> None:
    transport, under = one_send()
    transport.write(b"chunk")
    transport.write(b"HTTP/1.1 is not a head without its blank line")
    assert under.writes == [b"chunk", b"HTTP/1.1 is not a head without its blank line"]


async def slow_stream(_request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.5)
        yield b"late"

    return StreamingResponse(body(), media_type="text/plain")


async def plain(_request: Request) -> Response:
    return Response(b'"OK"', media_type="application/json")


@asynccontextmanager
async def served(tls: tuple[Path, Path] | None = None) -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/plain", plain), Route("/slow", slow_stream)])
    certfile, keyfile = tls or (None, None)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=OneSendHttpProtocol,
        log_config=None,
        lifespan="off",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def test_uvicorn_serves_kept_alive_requests_through_it() -> None:
    async with served() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 4\r\n" in head
            assert await reader.readexactly(4) == b'"OK"'
        writer.close()


async def test_a_streamed_response_shows_its_head_before_its_first_chunk() -> None:
    async with served() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert time.monotonic() - started < 0.4, "the head waited for the body"
        assert b"transfer-encoding: chunked" in head
        assert await reader.readuntil(b"0\r\n\r\n") == b"4\r\nlate\r\n0\r\n\r\n"
        writer.close()


async def test_over_tls_too(tmp_path: Path) -> None:
    identity = _SigningIdentity.generate("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(identity.certificate_pem)
    keyfile.write_bytes(
        identity.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    trusting = ssl.create_default_context(cafile=str(certfile))
    trusting.check_hostname = False  # the certificate names no address; trusting it is the point
    async with served((certfile, keyfile)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting)
        for path, body in ((b"/plain", b'"OK"'), (b"/slow", b"4\r\nlate\r\n0\r\n\r\n")):
            writer.write(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")
            assert await reader.readexactly(len(body)) == body
        writer.close()
