"""adapters/fingerprints.py: a copy of a checked blob is compared by fingerprint; copies read at once wait for the check."""

from __future__ import annotations

import asyncio

import pytest

from adapters.fingerprints import Fingerprints
from adapters.retry import RegistryError
from tests.fakes.raw_http import Handler, answering, read_head, serve
from tests.unit.registry_stubs import BLOB, BLOB_DIGEST, ORIGIN, fetch


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CORRUPT = b"L" + BLOB[1:]


def cache_serving(body: bytes, requests: list[str], hold: asyncio.Event | None = None) -> Handler:
    """A cache that answers each request with ``body``; with ``hold``, the second half waits for it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append((await read_head(reader))[0])
        half = len(body) // 2
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:half]))
        await writer.drain()
        if hold is not None:
            await hold.wait()
        writer.write(body[half:])
        await writer.drain()
        writer.close()

    return answer


async def under_check(fingerprints: Fingerprints) -> None:
    async with asyncio.timeout(5):
        while fingerprints.pending(BLOB_DIGEST, ORIGIN.base) is None:
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_copy_of_a_blob_already_checked_is_compared_by_fingerprint_instead_of_rehashed() -> None:
    fingerprints, good_requests, bad_requests = Fingerprints(), list[str](), list[str]()
    async with serve(cache_serving(BLOB, good_requests)) as good, serve(cache_serving(CORRUPT, bad_requests)) as bad:
        assert await fetch(good, "digest", fingerprints) == len(BLOB)
        assert fingerprints.known(BLOB_DIGEST) is not None
        assert await fetch(good, "digest", fingerprints) == len(BLOB)
        with pytest.raises(RegistryError, match=f"differs from a copy of {BLOB_DIGEST} that passed its digest check"):
            await fetch(bad, "digest", fingerprints)
    assert len(good_requests) == 2 and len(bad_requests) == 1


@pytest.mark.anyio
async def test_copies_read_at_once_wait_for_the_one_whose_digest_is_being_checked() -> None:
    fingerprints, hold, first, second = Fingerprints(), asyncio.Event(), list[str](), list[str]()
    async with serve(cache_serving(BLOB, first, hold)) as slow, serve(cache_serving(BLOB, second)) as fast:
        checking = asyncio.create_task(fetch(slow, "digest", fingerprints))
        await under_check(fingerprints)
        compared = asyncio.create_task(fetch(fast, "digest", fingerprints))
        await asyncio.sleep(0.3)
        assert not compared.done(), "a copy read for comparison waits for the checked copy"
        hold.set()
        assert await asyncio.gather(checking, compared) == [len(BLOB), len(BLOB)]
    assert len(first) == len(second) == 1


@pytest.mark.anyio
async def test_a_corrupt_copy_read_at_once_with_the_checked_one_fails_once_that_one_passes() -> None:
    fingerprints, hold = Fingerprints(), asyncio.Event()
    async with serve(cache_serving(BLOB, [], hold)) as slow, serve(cache_serving(CORRUPT, [])) as bad:
        checking = asyncio.create_task(fetch(slow, "digest", fingerprints))
        await under_check(fingerprints)
        compared = asyncio.create_task(fetch(bad, "digest", fingerprints))
        await asyncio.sleep(0.1)
        hold.set()
        assert await checking == len(BLOB)
        with pytest.raises(RegistryError, match="differs from a copy of"):
            await compared


@pytest.mark.anyio
async def test_when_the_checked_copy_fails_a_copy_waiting_on_it_is_read_again_and_checks_its_own_digest() -> None:
    fingerprints, hold, good_requests = Fingerprints(), asyncio.Event(), list[str]()
    async with serve(cache_serving(CORRUPT, [], hold)) as bad, serve(cache_serving(BLOB, good_requests)) as good:
        checking = asyncio.create_task(fetch(bad, "digest", fingerprints))
        await under_check(fingerprints)
        compared = asyncio.create_task(fetch(good, "digest", fingerprints))
        async with asyncio.timeout(5):  # until the copy has chosen to wait for the checked one
            while fingerprints.checks["fingerprint"] < 1:
                await asyncio.sleep(0.01)
        hold.set()
        with pytest.raises(RegistryError, match="failed its digest check"):
            await checking
        assert await compared == len(BLOB)
    assert len(good_requests) == 2, "read once for comparison, once more through sha256"
    assert fingerprints.known(BLOB_DIGEST) is not None


@pytest.mark.anyio
async def test_a_cache_failing_before_its_first_byte_never_makes_another_copy_wait() -> None:
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
    fingerprints, good_requests = Fingerprints(), list[str]()
    async with serve(answering(unavailable)) as down, serve(cache_serving(BLOB, good_requests)) as good:
        retrying = asyncio.create_task(fetch(down, "digest", fingerprints))
        await asyncio.sleep(0.1)
        assert await asyncio.wait_for(fetch(good, "digest", fingerprints), 0.8) == len(BLOB)
        assert not retrying.done()
        retrying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await retrying
    assert len(good_requests) == 1
