"""Reading bodies from outside within a cap counted after decompression, and quoting servers' text (adapters/bounded.py)."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.bounded import (
    CUT_MARK,
    DECODED_PIECE,
    QUOTE_CHARS,
    BodyError,
    TooLarge,
    UnsupportedEncoding,
    decoded_view,
    quote,
    read_capped,
    read_excerpt,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Chunks(httpx.AsyncByteStream):
    """A body as the transport hands it on: raw chunks, as many as asked for, made on demand."""

    def __init__(self, chunks: list[bytes], repeat: int = 1) -> None:
        self.chunks, self.repeat, self.read = chunks, repeat, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.repeat):
            for chunk in self.chunks:
                self.read += len(chunk)
                yield chunk


def response(stream: Chunks, encoding: str | None = None) -> httpx.Response:
    headers = {"Content-Encoding": encoding} if encoding else {}
    return httpx.Response(200, headers=headers, stream=stream, request=httpx.Request("GET", "http://registry.test/x"))


def gzip_of(data: bytes, wbits: int = 31) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


def zeros_gzip(mib: int) -> bytes:
    """``mib`` MiB of zeros, gzip-compressed (about 1,000 to 1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([packer.compress(block) for _ in range(mib)] + [packer.flush()])


BOMB = zeros_gzip(64)  # 64 KiB that inflate to 64 MiB


@pytest.mark.anyio
async def test_a_body_within_its_cap_is_read_whole_in_every_encoding() -> None:
    body = b'{"token": "abc"}' * 100
    assert await read_capped(response(Chunks([body[:7], body[7:]])), len(body)) == body
    assert await read_capped(response(Chunks([gzip_of(body)]), "gzip"), len(body)) == body
    assert await read_capped(response(Chunks([gzip_of(body, 15)]), "deflate"), len(body)) == body
    assert await read_capped(response(Chunks([gzip_of(body, -15)]), "deflate"), len(body)) == body, (
        "deflate without its zlib wrapper"
    )
    assert await read_capped(response(Chunks([body]), "identity"), len(body)) == body


@pytest.mark.anyio
async def test_a_body_one_byte_over_its_cap_is_refused() -> None:
    with pytest.raises(TooLarge, match="more than 99 bytes"):
        await read_capped(response(Chunks([bytes(100)])), 99)


@pytest.mark.anyio
async def test_a_gzip_bomb_is_refused_at_the_cap_counted_after_decompression_without_inflating_it() -> None:
    stream = Chunks([BOMB])
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            await read_capped(response(stream, "gzip"), 64 << 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"held {peak} bytes for a 64 KiB cap"


@pytest.mark.anyio
async def test_an_excerpt_reads_no_further_than_its_limit_and_never_fails() -> None:
    endless = Chunks([b"x" * 4096], repeat=100_000)  # 400 MB if read to the end
    assert await read_excerpt(response(endless), 10_000) == b"x" * 10_000
    assert endless.read < 64 << 10
    assert len(await read_excerpt(response(Chunks([BOMB]), "gzip"), 1000)) == 1000
    assert await read_excerpt(response(Chunks([b"not gzip at all"]), "gzip"), 1000) == b""
    assert await read_excerpt(response(Chunks([b"abc"]), "br"), 1000) == b""


@pytest.mark.anyio
async def test_a_streamed_body_is_inflated_in_bounded_pieces() -> None:
    view = decoded_view(response(Chunks([BOMB]), "gzip"))
    sizes = [len(piece) async for piece in view.aiter_bytes()]
    assert sum(sizes) == 64 << 20
    assert max(sizes) <= DECODED_PIECE
    assert "content-encoding" not in view.headers


def test_a_plain_body_is_streamed_as_it_is() -> None:
    plain = response(Chunks([b"abc"]))
    assert decoded_view(plain) is plain


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress"])
def test_an_encoding_the_gateway_did_not_ask_for_is_refused_by_name(encoding: str) -> None:
    with pytest.raises(UnsupportedEncoding, match="is not one the gateway decodes"):
        decoded_view(response(Chunks([b"abc"]), encoding))


@pytest.mark.anyio
async def test_a_corrupt_encoded_body_is_a_body_error() -> None:
    with pytest.raises(BodyError, match="not valid gzip data"):
        await read_capped(response(Chunks([b"\x1f\x8b" + bytes(30)]), "gzip"), 1000)


def test_a_quote_is_cut_to_a_few_hundred_characters_and_says_so() -> None:
    assert QUOTE_CHARS == 300
    long = quote("m" * 1_000_000)
    assert long == "m" * QUOTE_CHARS + CUT_MARK
    assert quote("x" * 50, limit=20) == "x" * 20 + "…[cut]"
    assert quote("blob unknown to registry") == "blob unknown to registry"


def test_a_quote_has_no_control_or_invisible_formatting_characters() -> None:
    assert quote("\x1b[31mred\x1b[0m\r\nforged: line\x00") == "[31mred[0m forged: line"
    assert quote("abc\u202edcba\u200b") == "abcdcba"
    assert quote("tabs\tand\n\nnewlines") == "tabs and newlines"
