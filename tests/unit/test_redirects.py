"""adapters/redirects.py: where a registry's credentials go when it redirects."""

from __future__ import annotations

import httpx
import pytest

from adapters.redirects import get_following_redirects
from adapters.urlpolicy import URLPolicy
from tests.unit.registry_stubs import Seen, mock_client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_an_https_registry_redirecting_to_http_on_its_own_host_and_port_gets_no_credentials_in_clear() -> None:
    seen: Seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            return httpx.Response(307, headers={"Location": "http://registry.example:8443/blob"})
        return httpx.Response(200, content=b"blob")

    async with mock_client(answer, seen) as http:
        policy = URLPolicy(allow=("registry.example",))
        response = await get_following_redirects(
            http, policy, "https://registry.example:8443/v2/a/blobs/x", {}, {"Authorization": "Bearer harbor-token"}
        )
        await response.aclose()
    assert seen == [
        ("https://registry.example:8443/v2/a/blobs/x", "Bearer harbor-token"),
        ("http://registry.example:8443/blob", None),
    ]
