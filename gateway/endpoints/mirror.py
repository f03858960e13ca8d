"""The registry mirror: the ``local`` clusters' OCI layouts served read-only on the pull side of
the distribution API (``GET /v2/``, ``GET|HEAD /v2/<name>/manifests/<ref>``, ``GET|HEAD
/v2/<name>/blobs/<digest>``), for containerd, CRI-O and skopeo on the nodes.

- Read-only and never fetching: a miss is a 404 with the OCI error code, so containerd moves on
  to its next host; nothing a node asks for makes the gateway reach out (no SSRF, no unbounded
  cache).
- The origin host comes from containerd's ``?ns=<host>``; without it, from the one origin the
  cache holds the repository from (several: a 404 saying to send ``ns``).
- Names, references, digests and ``ns`` are checked whole (``fullmatch``) before anything
  touches the filesystem; blobs are found only by digest in the layout's in-memory index.
- Blob bodies leave by zero-copy sendfile where the server offers it (``gateway.blobresponse``),
  with single ``Range`` requests answered 206 (416 when unsatisfiable).

Who may pull is decided in ``gateway.auth`` (the ``pull`` scope, a Basic challenge); on which
listener the mirror is served, by :class:`ListenerSplitMiddleware`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.blobresponse import FileResponse
from gateway.metrics import MirrorStats
from gateway.services import Gateway, gateway_of

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")
MIRROR_LISTENER = "preheat_gateway.mirror_listener"
"""Key of ``scope["state"]`` set on requests that arrived on ``server.mirror_listen``."""

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
ANY_DIGEST = re.compile(r"(?!sha256:)[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{1,256}")
"""A well-formed digest of another algorithm: a miss, not an error (a malformed sha256 one is invalid)."""
NS = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
MAX_NAME = 255
MAX_MANIFEST_BYTES = 4 << 20
"""Largest manifest served (the registry client's own cap on what it stores)."""
_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")
_ENCODER = msgspec.json.Encoder()


def _headers(*pairs: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [API_VERSION, *pairs]


def oci_error(status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = _ENCODER.encode({"errors": [{"code": code, "message": message}]})
    response = Response(body, status_code=status, media_type="application/json")
    response.raw_headers.append(API_VERSION)
    response.raw_headers.extend(headers or [])
    return response


def _layouts(gateway: Gateway) -> list[Any]:
    """The OCI layouts of the ``local`` clusters, each once, in config order."""
    seen: dict[int, Any] = {}
    for adapter in gateway.adapters.values():
        layout = getattr(adapter, "layout", None)
        if layout is not None and id(layout) not in seen:
            seen[id(layout)] = layout
    return list(seen.values())


async def base(request: Request) -> Response:
    response = Response(b"{}", media_type="application/json")
    response.raw_headers.append(API_VERSION)
    return response


async def dispatch(request: Request) -> Response:
    """``/v2/<name>/manifests/<reference>`` or ``/v2/<name>/blobs/<digest>``; anything else is NAME_UNKNOWN."""
    rest: str = request.path_params["rest"]
    if rest == "":
        return await base(request)
    name, _, tail = rest.rpartition("/")
    name, _, kind = name.rpartition("/")
    if kind not in ("manifests", "blobs") or not tail:
        return oci_error(404, "NAME_UNKNOWN", "not a path of the registry API's pull side")
    if len(name) > MAX_NAME or not NAME.fullmatch(name):
        return oci_error(404, "NAME_INVALID", "invalid repository name")
    stats = gateway_of(request).mirror_stats
    if kind == "manifests":
        return await _manifest(request, name, tail, stats)
    return await _blob(request, tail, stats)


async def _manifest(request: Request, name: str, reference: str, stats: MirrorStats) -> Response:
    if not (SHA256.fullmatch(reference) or TAG.fullmatch(reference)):
        if ANY_DIGEST.fullmatch(reference):
            stats.requests["manifest", "miss"] += 1
            return oci_error(404, "MANIFEST_UNKNOWN", "this mirror holds sha256 digests only")
        return oci_error(404, "MANIFEST_INVALID", "the reference is neither a tag nor a digest")
    host = _origin(request)
    if host is False:
        return oci_error(400, "NAME_INVALID", "ns must be the upstream registry's host[:port]")
    from adapters.layout import AmbiguousOrigin

    ambiguous: list[str] = []
    for layout in _layouts(gateway_of(request)):
        try:
            descriptor = layout.resolve(host, name, reference)
        except AmbiguousOrigin as error:
            ambiguous.extend(error.hosts)
            continue
        path = (
            layout.blob_path(descriptor.digest)
            if descriptor is not None and descriptor.size <= MAX_MANIFEST_BYTES
            else None
        )
        if path is None:
            continue
        try:
            with open(path, "rb") as file:
                body = file.read(descriptor.size + 1)
        except OSError:
            continue  # evicted meanwhile: maybe another layout has it
        if len(body) != descriptor.size:
            continue
        layout.touch(descriptor.digest)
        stats.requests["manifest", "hit"] += 1
        headers = _headers(
            (b"docker-content-digest", descriptor.digest.encode()), (b"etag", f'"{descriptor.digest}"'.encode())
        )
        if request.method == "HEAD":
            response = Response(
                status_code=200, headers={"content-length": str(len(body))}, media_type=descriptor.mediaType or None
            )
        else:
            response = Response(body, status_code=200, media_type=descriptor.mediaType or None)
            stats.sent(len(body))
        response.raw_headers.extend(headers)
        return response
    stats.requests["manifest", "miss"] += 1
    if ambiguous:
        hosts = ", ".join(sorted(set(ambiguous)))
        return oci_error(
            404,
            "MANIFEST_UNKNOWN",
            f"{name} is cached from several origins ({hosts}): name one with ?ns=<host> "
            "(containerd sends it when the gateway is a mirror in hosts.toml)",
        )
    return oci_error(
        404,
        "MANIFEST_UNKNOWN",
        f"manifest {reference} of {name} is not in this cache (the mirror never fetches: preheat it first)",
    )


def _origin(request: Request) -> str | bool | None:
    """The ``ns`` the client named (lowercase), None without one, False when it is malformed."""
    values = request.query_params.getlist("ns")
    if not values:
        return None
    if len(values) > 1 or not NS.fullmatch(values[0]):
        return False
    return values[0].lower()


async def _blob(request: Request, digest: str, stats: MirrorStats) -> Response:
    if not SHA256.fullmatch(digest):
        if ANY_DIGEST.fullmatch(digest):
            stats.requests["blob", "miss"] += 1
            return oci_error(404, "BLOB_UNKNOWN", "this mirror holds sha256 digests only")
        return oci_error(404, "DIGEST_INVALID", "not a digest")
    if _origin(request) is False:
        return oci_error(400, "NAME_INVALID", "ns must be the upstream registry's host[:port]")
    for layout in _layouts(gateway_of(request)):
        path = layout.blob_path(digest)
        if path is None:
            continue
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed by the response once sent
        except OSError:
            continue
        try:
            size = os.fstat(file.fileno()).st_size
        except OSError:
            file.close()
            continue
        stats.requests["blob", "hit"] += 1
        return _blob_response(request, file, size, digest, stats)
    stats.requests["blob", "miss"] += 1
    return oci_error(
        404, "BLOB_UNKNOWN", f"blob {digest} is not in this cache (the mirror never fetches: preheat it first)"
    )


def _blob_response(request: Request, file: Any, size: int, digest: str, stats: MirrorStats) -> Any:
    headers = _headers(
        (b"content-type", b"application/octet-stream"),
        (b"docker-content-digest", digest.encode()),
        (b"etag", f'"{digest}"'.encode()),
        (b"accept-ranges", b"bytes"),
    )
    wanted = parse_range(request.headers.get("range"), size)
    if wanted is None:
        offset, length, status = 0, size, 200
    elif wanted is False:
        file.close()
        return oci_error(
            416,
            "RANGE_NOT_SATISFIABLE",
            f"the range is outside the blob's {size} bytes",
            [(b"content-range", f"bytes */{size}".encode())],
        )
    else:
        offset, end = wanted
        length, status = end - offset + 1, 206
        headers.append((b"content-range", f"bytes {offset}-{end}/{size}".encode()))
    headers.append((b"content-length", str(length).encode()))
    return FileResponse(
        file,
        offset=offset,
        length=length,
        status=status,
        headers=headers,
        on_sent=stats.sent if request.method == "GET" else None,
    )


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """A single ``bytes=`` range as (first, last) inclusive; None to send the whole blob (no header,
    or one this server ignores: several ranges, bad syntax); False when it is unsatisfiable (416)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:  # the last N bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    first = int(match[1])
    if first >= size:
        return False
    last = int(match[2]) if match[2] else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


def routes() -> list[Route]:
    return [
        Route("/v2/", base, methods=["GET"]),
        Route("/v2/{rest:path}", dispatch, methods=["GET"]),
    ]
