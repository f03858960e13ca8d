"""Stubs shared by the unit tests of adapters/manifest.py, streaming.py, fingerprints.py, redirects.py and oci.py."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable

import httpx

from adapters.fingerprints import Fingerprints
from adapters.manifest import Blob
from adapters.oci import OciClient, RegistryAuth
from adapters.reference import ImageRef, parse_manifest_url
from adapters.streaming import DiscardSink, Verify
from adapters.transport import new_client
from adapters.urlpolicy import URLPolicy

REF = ImageRef("https", "h", "app", "1")


BLOB = b"layer bytes " * 100
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


ORIGIN = parse_manifest_url("http://origin.example/v2/library/app/manifests/1.0")


async def fetch(base_url: str, verify: Verify, fingerprints: Fingerprints | None = None) -> int:
    async with new_client(timeout=5) as http:
        client = OciClient(http, URLPolicy(allow=("127.0.0.1",)), fingerprints=fingerprints)
        # One origin's blob read through the cache at ``base_url``, as the mirror adapter reads it.
        url = f"{base_url}/v2/library/app/blobs/{BLOB_DIGEST}"
        return await client.fetch_blob(
            ORIGIN, Blob(BLOB_DIGEST, len(BLOB), ""), RegistryAuth(), DiscardSink, url=url, verify=verify
        )


Seen = list[tuple[str, str | None]]


class _Streamed(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


def mock_client(answer: Callable[[httpx.Request], httpx.Response], seen: Seen) -> httpx.AsyncClient:
    """A client whose every answer comes from ``answer``, streamed as the real transport's are."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        answered = answer(request)
        return httpx.Response(answered.status_code, headers=answered.headers, stream=_Streamed(answered.content))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=False)
