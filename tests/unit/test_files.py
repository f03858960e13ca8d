"""Streaming a file URL (adapters/files.py): what is sent, and how an encoded body is read."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.base import OriginTLS
from adapters.files import file_ref, stream_url
from adapters.retry import FetchError
from adapters.streaming import DiscardSink
from adapters.urlpolicy import URLPolicy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _HashingSink:
    """Keeps the sha256 of what the fetch wrote: the decoded bytes, not the encoded ones."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.committed = False

    def write(self, chunk: bytes) -> None:
        self.sha256.update(chunk)

    def commit(self) -> None:
        self.committed = True

    def discard(self) -> None:
        pass


class _Streamed(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


@pytest.mark.anyio
async def test_a_caller_header_with_a_line_break_fails_the_file_cleanly_and_sends_nothing() -> None:
    sent: list[httpx.Request] = []
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))
    ) as http:
        with pytest.raises(
            FetchError,
            match=r"header 'X-Token' of the request for file https://files.example/a.bin contains a line break",
        ):
            await stream_url(
                http,
                URLPolicy(allow=("files.example",)),
                file_ref("https://files.example/a.bin"),
                DiscardSink,
                headers={"X-Token": "abc\r\nX-Injected: 1"},
            )
    assert sent == []


@pytest.mark.anyio
async def test_a_gzip_encoded_file_is_inflated_in_bounded_pieces_and_hashed_as_decoded() -> None:
    body = bytes(8 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    encoded = packer.compress(body) + packer.flush()
    pieces: list[int] = []
    sink = _HashingSink()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=_Streamed(encoded))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        size = await stream_url(
            http,
            URLPolicy(allow=("files.example",)),
            file_ref("https://files.example/z"),
            lambda: sink,
            on_bytes=pieces.append,
        )
    assert size == len(body) and max(pieces) <= 1 << 20 and sink.committed
    assert (
        "sha256:" + sink.sha256.hexdigest() == "sha256:2daeb1f36095b44b318410b3f4e8b5d989dcc7bb023d1426c492dab0a3053e74"
    )


def test_a_file_read_under_a_jobs_own_tls_is_never_the_verified_file() -> None:
    url = "https://files.example/model.bin"
    verified = file_ref(url)
    insecure = file_ref(url, origin_tls=OriginTLS(insecure_skip_verify=True))
    own_ca = file_ref(url, origin_tls=OriginTLS(certificate_chain=("-----BEGIN CERTIFICATE-----\nx",)))

    assert len({verified.key, insecure.key, own_ca.key}) == 3
    assert verified.display_url == insecure.display_url == own_ca.display_url, "rows show the same URL"
