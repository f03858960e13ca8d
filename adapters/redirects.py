"""Following redirects by hand: every target checked, credentials and a job's TLS kept to the first origin."""

from __future__ import annotations

from ssl import SSLContext
from urllib.parse import urljoin

import httpx

from adapters.transport import SSL_EXTENSION
from adapters.urlpolicy import RefusedURL, URLPolicy, origin

MAX_REDIRECTS = 5


async def get_following_redirects(
    client: httpx.AsyncClient,
    policy: URLPolicy,
    url: str,
    headers: dict[str, str],
    credentials: dict[str, str],
    *,
    ssl_context: SSLContext | None = None,
) -> httpx.Response:
    """GET ``url`` (streamed), following redirects by hand: the one place redirects are followed.

    Every target must pass ``policy.check_redirect``, and ``credentials`` (an Authorization
    header, a caller's token) go only to the first URL's origin (scheme, host and port), never
    to where it redirects (object storage with a signed URL): an https registry redirecting to
    http on its own host gets no credentials in clear. ``ssl_context`` (a job's own TLS) is
    likewise for the first origin only: another host is verified as the client verifies it.
    The final URL is ``response.request.url``. Raises ``httpx.TransportError`` or ``RefusedURL``.
    """
    first = origin(url)
    own_tls = {SSL_EXTENSION: ssl_context} if ssl_context is not None else None
    for _ in range(MAX_REDIRECTS + 1):
        at_first = origin(url) == first
        sent = {**headers, **credentials} if at_first else headers
        request = client.build_request("GET", url, headers=sent, extensions=own_tls if at_first else None)
        response = await client.send(request, stream=True)
        if response.status_code not in (301, 302, 303, 307, 308) or "location" not in response.headers:
            return response
        await response.aclose()
        url = urljoin(url, response.headers["location"])
        await policy.check_redirect(url)
    raise RefusedURL(f"more than {MAX_REDIRECTS} redirects")
