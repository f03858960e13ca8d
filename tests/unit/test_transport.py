"""The aiohttp transport keeps httpx's contract: its exceptions, its headers, streamed bodies."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref

import httpx
import pytest

from adapters.oci import _describe
from adapters.transport import new_client
from tests.fakes.forward_proxy import ForwardProxy
from tests.fakes.raw_http import answering, read_head, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_is_a_connect_error_described_as_such() -> None:
    async with new_client(timeout=5) as client:
        with pytest.raises(httpx.ConnectError) as raised:
            await client.get(f"http://127.0.0.1:{free_port()}/v2/")
    assert _describe(raised.value) == "connection refused"


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(5)

    async with serve(silent) as url, new_client(timeout=httpx.Timeout(0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url)


async def test_garbage_instead_of_http_is_a_protocol_error() -> None:
    async with serve(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as url, new_client(timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(url)


async def test_a_body_cut_short_is_a_read_error_while_streaming() -> None:
    ten_of_a_thousand = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10

    async with serve(answering(ten_of_a_thousand)) as url, new_client(timeout=5) as client:
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadError):
                await response.aread()


async def test_headers_keep_their_case_and_bodies_stream_in_pieces() -> None:
    seen: list[str] = []
    body = b"0123456789" * 300_000
    response_bytes = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Thing: yes\r\n\r\n" % len(body) + body

    async with serve(answering(response_bytes, seen)) as url, new_client(timeout=5, headers={"User-Agent": "harbor-preheat-gateway/test"}) as client:
        async with client.stream("GET", url, headers={"X-Origin-Token": "t0k"}) as response:
            pieces = [piece async for piece in response.aiter_bytes()]
    assert b"".join(pieces) == body and len(pieces) > 1
    assert response.headers["x-thing"] == "yes"
    assert "X-Origin-Token: t0k" in seen and "User-Agent: harbor-preheat-gateway/test" in seen


async def test_redirects_are_handed_back_not_followed() -> None:
    to_metadata = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n"

    async with serve(answering(to_metadata)) as url, new_client(timeout=5) as client:
        response = await client.get(url)
    assert response.status_code == 307 and response.headers["location"] == "http://169.254.169.254/"


async def test_proxies_from_the_environment_are_used_unless_no_proxy_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    with ForwardProxy() as proxy:
        async with serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")) as url:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            async with new_client(timeout=5) as client:
                assert (await client.get(f"{url}/through")).text == "ok"
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            async with new_client(timeout=5) as client:
                assert (await client.get(f"{url}/direct")).text == "ok"
    assert proxy.count("/through") == 1 and proxy.count("/direct") == 0


async def test_a_closed_response_is_freed_at_once_without_the_cycle_collector() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with serve(answering(ok)) as url, new_client(timeout=5) as client:
        gc.collect()
        gc.disable()
        try:
            read = await client.get(url)
            async with client.stream("GET", url) as streamed:
                await streamed.aread()
            gone = [weakref.ref(read), weakref.ref(streamed)]
            del read, streamed
            assert [ref() for ref in gone] == [None, None]
        finally:
            gc.enable()
