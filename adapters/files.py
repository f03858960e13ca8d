"""File preheats: a URL's identity, and streaming a file URL to a sink.

Two signed URLs of one object differ only in their signing parameters. Dragonfly removes
``filtered_query_params`` (``&``-separated names; a list of S3/GCS/OSS/OBS/COS signing
parameters plus ``ns`` when none are given) before it uses a URL as a task's identity, so
both URLs are one task. The gateway does the same: :func:`file_ref` forms that identity
(``tag`` and ``application`` then tell otherwise equal URLs apart, as in Dragonfly), and the
adapters key their caches and their de-duplication on it.

:func:`stream_url` fetches a file URL to the end: redirects followed by hand and each target
checked against the URL policy (the caller's headers and the job's own TLS never leave the
first origin), transient failures retried with backoff, every byte streamed into a sink,
never held whole, and an encoded body inflated in bounded pieces (:mod:`adapters.bounded`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from adapters.base import OriginTLS
from adapters.bounded import BodyError, decoded_view, quote
from adapters.describe import certificate_advice, describe
from adapters.guard import RefusedConnection
from adapters.redirects import get_following_redirects
from adapters.retry import FetchError, retrying
from adapters.streaming import BlobSink, BrokenStream, drain
from adapters.transport import CertificateRejected
from adapters.urlpolicy import RefusedURL, URLPolicy, origin

DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = (
    "Expires",
    "Signature",
    "ns",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    "OSSAccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "AccessKeyId",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
)
"""Dragonfly's default ``filtered_query_params``: used when a request names none."""

_NOT_FORWARDED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "proxy-authorization", "te", "upgrade"}
)
_UNSAFE = re.compile(r"[\r\n\x00]")
RETRY_ATTEMPTS = 3
"""Attempts at one file before a transient failure is final (:func:`adapters.retry.retrying`)."""
RETRY_BASE_SECONDS = 0.5


@dataclass(frozen=True)
class FileRef:
    """One file to warm: where to fetch it, and what it is."""

    url: str
    """The URL as the caller gave it (signature included): what is fetched."""
    display_url: str
    """The URL without its filtered parameters: shown in rows and messages, so signatures are not."""
    identity: str
    """``display_url`` plus ``tag`` and ``application``: equal identities are one file."""

    @property
    def key(self) -> str:
        """sha256 (hex) of the identity: the local cache's file name and the de-duplication key."""
        return hashlib.sha256(self.identity.encode()).hexdigest()


def filter_url(url: str, filtered_query_params: Iterable[str] = ()) -> str:
    """``url`` without the named query parameters (names compared case-insensitively).

    The remaining parameters are sorted by name (as Go's ``url.Values.Encode`` does), the
    scheme and host lower-cased, and the fragment dropped, so equal objects compare equal.
    """
    names = {name.lower() for name in (tuple(filtered_query_params) or DEFAULT_FILTERED_QUERY_PARAMS)}
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in names]
    kept.sort(key=lambda pair: pair[0])
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", urlencode(kept), ""))


def file_ref(
    url: str,
    filtered_query_params: Iterable[str] = (),
    tag: str = "",
    application: str = "",
    origin_tls: OriginTLS | None = None,
) -> FileRef:
    """The identity of a file URL, as Dragonfly forms a task's (see the module docstring).

    A file fetched under a job's own TLS (``origin_tls``) is a different file: a file has no digest,
    so one read without verification, or trusting a caller's CA, must never be reused as verified.
    """
    display = filter_url(url, filtered_query_params)
    identity = display
    if tag:
        identity += f"\ntag={tag}"
    if application:
        identity += f"\napplication={application}"
    if origin_tls is not None:
        trust = "insecure" if origin_tls.insecure_skip_verify else "\n".join(origin_tls.certificate_chain)
        identity += f"\ntls={hashlib.sha256(trust.encode()).hexdigest()}"
    return FileRef(url=url, display_url=display, identity=identity)


async def stream_url(
    client: httpx.AsyncClient,
    policy: URLPolicy,
    ref: FileRef,
    open_sink: Callable[[], BlobSink],
    *,
    headers: Mapping[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    via: str = "",
    ssl_context: SSLContext | None = None,
) -> int:
    """GET ``ref.url`` to the end into a fresh sink per attempt; returns how many bytes it had.

    ``client`` must not follow redirects itself (the gateway's shared client, or a proxy's).
    ``via`` names what the request went through (``proxy node-1``), for messages. ``ssl_context``
    is the job's own TLS to the URL's origin (``certificate_chain``, ``insecure_skip_verify``).
    """
    forwarded = {k: v for k, v in (headers or {}).items() if k.lower() not in _NOT_FORWARDED}
    for name, value in forwarded.items():
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            raise FetchError(
                f"header {quote(name, 60)!r} of the request for file {ref.display_url} contains a line break or NUL "
                "character, which cannot be sent: remove it from the request's headers"
            )
    return await retrying(
        lambda: _fetch_once(client, policy, ref, open_sink, forwarded, on_bytes, via, ssl_context),
        attempts=RETRY_ATTEMPTS,
        base_seconds=RETRY_BASE_SECONDS,
    )


async def _fetch_once(
    client: httpx.AsyncClient,
    policy: URLPolicy,
    ref: FileRef,
    open_sink: Callable[[], BlobSink],
    headers: dict[str, str],
    on_bytes: Callable[[int], None] | None,
    via: str,
    ssl_context: SSLContext | None,
) -> int:
    where = f"file {ref.display_url}" + (f" through {via}" if via else "")
    # The caller's headers (a token, a cookie) and the job's TLS are for the first host only.
    try:
        response = await get_following_redirects(client, policy, ref.url, {}, headers, ssl_context=ssl_context)
    except CertificateRejected as error:  # the same certificate fails the same way: not retried
        raise FetchError(f"cannot fetch {where}: {certificate_advice(error, origin(ref.url))}") from None
    except RefusedConnection as error:  # the connect-time policy: retrying would only ask DNS again
        raise FetchError(f"cannot fetch {where}: {describe(error)}") from None
    except httpx.TransportError as error:
        raise FetchError(f"cannot fetch {where}: {describe(error)}", transient=True) from None
    except RefusedURL as error:
        raise FetchError(f"redirect for {where} refused: {error}") from None
    try:
        if response.status_code != 200:
            raise _status_error(response.status_code, where)
        try:
            body = decoded_view(response)  # an encoded body is inflated in bounded pieces
        except BodyError as error:
            raise FetchError(f"{where} could not be read: {error}") from None
        sink = open_sink()
        try:
            size = await drain(body, sink, on_bytes=on_bytes)
            sink.commit()
        except BrokenStream as broken:
            sink.discard()
            raise FetchError(
                f"reading {where} broke off after {broken.received} bytes: {broken.reason}", transient=True
            ) from None
        except BodyError as error:
            sink.discard()
            raise FetchError(f"{where} could not be read: {error}") from None
        except BaseException:
            sink.discard()
            raise
        return size
    finally:
        await response.aclose()


def _status_error(status: int, where: str) -> FetchError:
    if status == 404:
        return FetchError(f"{where} not found (404): check the URL", status=status)
    if status in (401, 403):
        return FetchError(
            f"{where} was refused ({status}): the URL's signature may have expired or the request's headers lack access; "
            "re-sign the URL or pass headers that grant access",
            status=status,
        )
    if status == 407:
        return FetchError(
            f"{where} was refused by the proxy (407): check the proxy's username and password_env", status=status
        )
    transient = status >= 500 or status == 429
    return FetchError(f"{where} answered {status}", transient=transient, status=status)
