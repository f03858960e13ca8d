"""adapters/streaming.py: a blob's copy checked by its digest, or by its size only."""

from __future__ import annotations

import pytest

from adapters.retry import RegistryError
from tests.fakes.raw_http import answering, serve
from tests.unit.registry_stubs import BLOB, fetch


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def blob_answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


@pytest.mark.anyio
async def test_a_digest_check_catches_corrupt_bytes_that_a_size_check_lets_through() -> None:
    corrupt = b"L" + BLOB[1:]
    async with serve(answering(blob_answer(corrupt))) as url:
        with pytest.raises(RegistryError, match="failed its digest check"):
            await fetch(url, "digest")
        assert await fetch(url, "size") == len(BLOB)


@pytest.mark.anyio
async def test_a_size_check_catches_a_blob_of_the_wrong_length() -> None:
    async with serve(answering(blob_answer(BLOB[:-1]))) as url:
        with pytest.raises(RegistryError, match=f"was {len(BLOB) - 1} bytes where the manifest says {len(BLOB)}"):
            await fetch(url, "size")
