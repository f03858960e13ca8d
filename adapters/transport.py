"""httpx's API over aiohttp's connection pool and C parser: the one way this project speaks HTTP.

Why not httpx's own transport: httpcore parses HTTP in pure Python, so streaming a blob
through it costs about four times the CPU of aiohttp for the same bytes; on a small
machine that CPU is taken from the caches being warmed and from the API's latency (README,
Benchmarks). Everything above this module keeps httpx's types: requests, responses,
timeouts and the exception tree (``ConnectError`` means "never sent", which the Dragonfly
adapter relies on to retry a create safely).

Why not the ``httpx-aiohttp`` package: it reports a refused connection as ``ConnectTimeout``,
lets protocol errors through as aiohttp exceptions and reads bodies 16 KiB at a time.

Given a :class:`adapters.guard.ConnectGuard`, the transport connects only to addresses the
URL policy allows, decided on the answers it actually connects to (DNS rebinding): see
:mod:`adapters.guard`. A refusal is :class:`adapters.guard.RefusedConnection`, a ``ConnectError``.

TLS to an origin can be set per request and per host: a request carrying an
``ssl.SSLContext`` in ``request.extensions["ssl"]`` (a job's ``certificate_chain`` or
``insecure_skip_verify``) connects with it; otherwise a context given for the request's
``host[:port]`` at construction (``registries.tls``) is used; otherwise the client's own.
aiohttp keys its pool by the context, so connections made under one setting never serve
another. A certificate that fails verification is :class:`CertificateRejected`.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

from adapters.guard import AddressRefused, ConnectGuard, GuardedResolver, RefusedConnection

# aiohttp's exceptions, most specific first, and the httpx exception each one means.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (asyncio.TimeoutError, httpx.PoolTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.NetworkError),
)

_CAUGHT = tuple(aiohttp_error for aiohttp_error, _ in _ERRORS)

DEFAULT_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)

READ_CHUNK = 1 << 20
"""Largest piece a body is handed on in; aiohttp's buffer bounds what is actually held."""
READ_BUFFER = 1 << 20
"""aiohttp's read buffer per connection: it holds up to twice this before it stops reading."""
SSL_EXTENSION = "ssl"
"""The request extension holding that request's own ``ssl.SSLContext``."""


class CertificateRejected(httpx.ConnectError):
    """The server's TLS certificate failed verification (an unknown CA, a wrong name, expired): nothing was sent.

    Not worth retrying: the same certificate fails the same way. ``reason`` is OpenSSL's word for it.
    """

    def __init__(self, message: str, *, reason: str, request: httpx.Request) -> None:
        super().__init__(message, request=request)
        self.reason = reason


def tls_authority(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` as (lower-cased host, port); a host alone means port 443.

    :class:`ValueError` for anything else (a scheme, a path, user-info, a bad port).
    """
    if not text or any(c in text for c in "/?#@ \t\r\n"):
        raise ValueError(f"{text!r} is not a host or host:port (no scheme, path or spaces)")
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{text!r} is not a host or host:port ({error})") from None
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host")
    if port == 0:
        raise ValueError(f"{text!r}: port 0 is no port")
    return parts.hostname.lower(), 443 if port is None else port


@contextmanager
def _translated(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except _CAUGHT as error:
        if isinstance(error, aiohttp.ClientConnectorError) and isinstance(error.os_error, AddressRefused):
            raise RefusedConnection(str(error.os_error), request=request) from error
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            reason = _verify_reason(error.certificate_error)
            raise CertificateRejected(
                f"the TLS certificate of {error.host}:{error.port} failed verification ({reason})",
                reason=reason,
                request=request,
            ) from error
        meant = next(httpx_error for aiohttp_error, httpx_error in _ERRORS if isinstance(error, aiohttp_error))
        raise meant(str(error) or type(error).__name__, request=request) from error


def _verify_reason(error: Exception) -> str:
    """OpenSSL's reason (``unable to get local issuer certificate``, ``Hostname mismatch, ...``), in one short line."""
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
    return " ".join(str(reason).split())[:200]


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp; once closed, it unties its response from httpx's wrapper.

    httpx's client wraps every response's stream in an object that points back at the response:
    a reference cycle, which left each request's ~45 objects (headers, URLs, aiohttp's response)
    to the cyclic garbage collector, whose pauses stop the event loop. Replacing the closed
    stream breaks the cycle, and reference counting frees them at once.
    """

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request
        self.owner: httpx.Response | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated(self._request):
            async for chunk in self._response.content.iter_chunked(READ_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        self._response.release()  # back to the pool when read to the end, closed otherwise
        if self.owner is not None:
            self.owner.stream, self.owner = _CLOSED, None


_CLOSED = httpx.ByteStream(b"")


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (created on first use, inside the running loop) behind httpx."""

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        verify: bool = True,
        proxy: httpx.Proxy | None = None,
        trust_env: bool = False,
        guard: ConnectGuard | None = None,
        tls_by_host: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        self._limits = limits
        self._ssl: ssl.SSLContext | bool = httpx.create_ssl_context(verify=verify) if verify else False
        # host[:port] -> context (registries.tls), keyed as a request's (host, port) is matched.
        self._tls_by_host = {tls_authority(authority): context for authority, context in (tls_by_host or {}).items()}
        self._proxy = str(proxy.url) if proxy else None
        self._proxy_auth = aiohttp.BasicAuth(*proxy.auth) if proxy and proxy.auth else None
        # HTTP(S)_PROXY, ALL_PROXY and NO_PROXY, read once: aiohttp's own trust_env re-reads the
        # environment and ~/.netrc in a thread on every request.
        self._env_proxies = urllib.request.getproxies_environment() if trust_env and proxy is None else {}
        # The proxies are the operator's: they may be anywhere. What they fetch, they resolve.
        proxies = [self._proxy] if self._proxy else [url for scheme, url in self._env_proxies.items() if scheme != "no"]
        self._guard = guard.including(proxies) if guard is not None else None
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None

    def _open(self) -> aiohttp.ClientSession:
        self._resolver = GuardedResolver(self._guard) if self._guard is not None else None
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry or 5.0,
            ssl=self._ssl,
            # Names are resolved once and connected to only as checked; aiohttp keeps checked answers
            # for its DNS cache's ttl, so the check runs once per resolution, not per request.
            resolver=self._resolver,
        )
        # auto_decompress off: httpx decodes, so a digest is always taken over the decoded bytes.
        # read_bufsize: aiohttp stops reading a socket once it holds twice this; at its default
        # (64 KiB) a body being hashed stalled the sending registry every 128 KiB, and the stop-go
        # cost the registries more CPU than the hash itself (2 GiB into two caches: 1.45x -> 1.23x
        # the curl floor). 4 MiB was no faster and held more memory.
        return aiohttp.ClientSession(connector=connector, auto_decompress=False, read_bufsize=READ_BUFFER)

    def _proxy_for(self, url: httpx.URL) -> str | None:
        if self._proxy or not self._env_proxies:
            return self._proxy
        proxy = self._env_proxies.get(url.scheme) or self._env_proxies.get("all")
        # typeshed leaves out proxy_bypass_environment, which urllib.request has defined since Python 3.2.
        if proxy and urllib.request.proxy_bypass_environment(url.host, self._env_proxies):  # type: ignore[attr-defined]
            return None
        return proxy

    def _ssl_for(self, request: httpx.Request, proxy: str | None) -> ssl.SSLContext | None:
        """The request's own context, else its authority's (``tls_by_host``); ``None``: the session's."""
        url = request.url
        if url.scheme != "https":
            return None
        context = request.extensions.get(SSL_EXTENSION) or self._tls_by_host.get((url.host.lower(), url.port or 443))
        if context is not None and proxy is not None and proxy.lower().startswith("https:"):
            # aiohttp would use the origin's context for the proxy's own TLS as well: a job's
            # insecure_skip_verify would then stop verifying the operator's proxy (and its password).
            raise httpx.ProxyError(
                f"TLS settings for {url.host} cannot be used through the https proxy {urlsplit(proxy).netloc}: "
                "reach that proxy over http (the origin's TLS then runs end to end through it)",
                request=request,
            )
        return context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open()
        # aiohttp never resolves an IP literal: its IP is judged here, before anything is sent.
        if self._guard is not None and (why := self._guard.literal_refusal(request.url)) is not None:
            raise RefusedConnection(why, request=request)
        timeout = request.extensions.get("timeout", {})
        content = await request.aread()  # only small bodies are ever sent (JSON)
        options: dict[str, Any] = {}
        proxy = self._proxy_for(request.url)
        if proxy:
            options.update(proxy=proxy, proxy_auth=self._proxy_auth)
        if (context := self._ssl_for(request, proxy)) is not None:
            options["ssl"] = context  # aiohttp keys its pool by it
        # A head dripped a byte at a time never trips the per-read timeout: the whole head has a deadline.
        head_seconds = (
            sum(value for value in (timeout.get("pool"), timeout.get("connect"), timeout.get("read")) if value) or None
        )
        try:
            async with asyncio.timeout(head_seconds):
                response = await self._send(self._session, request, content, timeout, options)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no response head within {head_seconds:g}s", request=request) from None
        stream = _Body(response, request)
        stream.owner = httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=stream,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )
        return stream.owner

    @staticmethod
    async def _send(
        session: aiohttp.ClientSession,
        request: httpx.Request,
        content: bytes,
        timeout: dict[str, float | None],
        options: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        with _translated(request):
            return await session.request(
                request.method,
                str(request.url),
                headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw],
                data=content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
                **options,
            )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._resolver is not None:  # aiohttp closes only a resolver it made itself
            await self._resolver.close()


def new_client(
    *,
    timeout: httpx.Timeout | float,
    limits: httpx.Limits = DEFAULT_LIMITS,
    verify: bool = True,
    proxy: httpx.Proxy | None = None,
    trust_env: bool = True,
    headers: dict[str, str] | None = None,
    guard: ConnectGuard | None = None,
    tls_by_host: Mapping[str, ssl.SSLContext] | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on :class:`AiohttpTransport`; redirects are never followed here.

    ``guard`` enforces the URL policy where connections are made (:mod:`adapters.guard`): every
    client that reaches outside the gateway passes one; ``None`` (tests only) connects anywhere.
    ``tls_by_host`` maps ``host[:port]`` (a host alone: port 443) to the context https requests to it
    use, unless a request carries its own in ``extensions["ssl"]``.
    """
    return httpx.AsyncClient(
        transport=AiohttpTransport(
            limits=limits, verify=verify, proxy=proxy, trust_env=trust_env, guard=guard, tls_by_host=tls_by_host
        ),
        trust_env=False,  # the transport reads the proxy environment itself
        follow_redirects=False,
        timeout=timeout,
        headers=headers,
    )
