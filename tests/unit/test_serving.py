"""The guarded protocol in-process, and the small pieces of the hostile-peer defences.

The protocol tests run uvicorn on loopback with :func:`gateway.serving.protocol_class`; the
attacks themselves (thousands of sockets against a real gateway process) are in
``tests/security/test_hostile_peer.py``.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.throttle import SigninThrottle, client_key
from gateway.ids import ascii_number
from gateway.routing import allowed_methods
from gateway.serving import GuardedHttpProtocol, Limits, fit_to_fd_limit, protocol_class

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["²", "١", "１", "①", "1²", "+1", "-1", " 1", "1 ", "1_0", "", "1" * 19])
def test_only_ascii_digits_make_an_id(text: str) -> None:
    assert ascii_number(text) is None


def test_ascii_digits_do() -> None:
    assert ascii_number("0") == 0 and ascii_number("42") == 42 and ascii_number("9" * 18) == 10**18 - 1


# --- routing -----------------------------------------------------------------------------------


async def _a(_request: Request) -> Response:
    return Response("a")


async def _b(_request: Request) -> Response:
    return Response("b")


def test_a_405_allows_every_method_of_every_route_on_the_path() -> None:
    routes = [
        Route("/x/{id:int}", _a, methods=["GET"]),
        Route("/y", _a, methods=["GET"]),
        Route("/x/{id:int}", _b, methods=["PATCH"]),
    ]
    scope = {"type": "http", "path": "/x/7", "root_path": "", "method": "PUT"}
    assert allowed_methods(routes, scope) == ["GET", "HEAD", "PATCH"]
    assert allowed_methods(routes, {**scope, "path": "/z"}) == []


# --- sign-in throttle --------------------------------------------------------------------------


def test_the_throttle_allows_a_burst_then_asks_to_wait_and_refunds_successes() -> None:
    throttle = SigninThrottle(burst=2, per_minute=60)
    assert throttle.acquire("a") == 0 and throttle.acquire("a") == 0
    wait = throttle.acquire("a")
    assert 0 < wait <= 1.0
    assert throttle.acquire("b") == 0  # per client
    throttle.refund("b")
    assert throttle.acquire("b") == 0 and throttle.acquire("b") == 0


def test_the_throttle_keeps_a_bounded_number_of_clients() -> None:
    throttle = SigninThrottle(burst=1, per_minute=1, max_clients=100)
    for n in range(1000):
        throttle.acquire(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._buckets) == 100


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.1.2.3") == client_key("10.1.2.3") == "10.1.2.3"
    assert client_key(None) == "unknown"


# --- the file-descriptor budget ----------------------------------------------------------------


def test_the_connection_cap_is_lowered_to_fit_the_open_file_limit() -> None:
    assert fit_to_fd_limit(Limits(max_connections=10_000), 4096).max_connections == 4096 - 512
    assert fit_to_fd_limit(Limits(max_connections=100), 4096).max_connections == 100
    assert fit_to_fd_limit(Limits(), resource.RLIM_INFINITY) == Limits()


# --- the protocol, in-process ------------------------------------------------------------------


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(f"{request.method} {len(body)}".encode(), media_type="text/plain")


@asynccontextmanager
async def served(limits: Limits) -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"])])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=protocol_class(limits),
        ws="none",
        log_config=None,
        lifespan="off",
        limit_concurrency=None,
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


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    return head, await reader.readexactly(length)


async def test_pipelined_and_kept_alive_requests_are_served_in_order() -> None:
    async with served(Limits(max_header_bytes=2048)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n" + post + b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        bodies = [(await read_response(reader))[1] for _ in range(3)]
        assert bodies == [b"GET 0", b"POST 3", b"GET 0"]
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[1] == b"GET 0"
        writer.close()


async def test_a_body_in_the_same_read_as_its_head_does_not_count_against_the_head_limit() -> None:
    async with served(Limits(max_header_bytes=1024)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"z" * 100_000
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        head, answer = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200") and answer == b"POST 100000"
        writer.close()


async def test_a_head_over_the_limit_split_across_reads_is_refused() -> None:
    async with served(Limits(max_header_bytes=1024)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):
            writer.write(b"X-Pad: " + b"p" * 200 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        head, answer = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 431 ") and b"server.max_header_bytes" in answer
        assert await reader.read() == b""
        writer.close()


async def test_a_kept_alive_connection_gets_the_header_deadline_for_its_next_request() -> None:
    async with served(Limits(header_timeout=0.5, keep_alive=5)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response(reader)
        await asyncio.sleep(0.8)  # idle past the header deadline: keep-alive allows it
        writer.write(b"GET /echo HTTP/1.1\r\n")  # ...but a started head must end within 0.5 s
        started = asyncio.get_running_loop().time()
        head, answer = await asyncio.wait_for(read_response(reader), 3)
        assert head.startswith(b"HTTP/1.1 408 ") and b"server.header_timeout_seconds" in answer
        assert 0.4 < asyncio.get_running_loop().time() - started < 2
        writer.close()


def test_the_protocol_is_httptools_never_h11() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    bound = protocol_class(Limits(max_connections=7))
    assert issubclass(bound, GuardedHttpProtocol) and issubclass(bound, HttpToolsProtocol)
    assert bound.limits.max_connections == 7 and GuardedHttpProtocol.limits == Limits()
