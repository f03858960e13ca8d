"""JSON in and out of every endpoint: bounded request bodies, JSON replies and errors.

Every error leaves the gateway as ``{"errors": "<what and how to fix>"}`` (the shape
Dragonfly's manager uses), with a 4xx status for anything the caller can fix.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.ids import ascii_number
from gateway.services import gateway_of

_ENCODER = msgspec.json.Encoder()


class APIError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = content if isinstance(content, bytes) else _ENCODER.encode(content)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"errors": message}, status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise APIError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise APIError(413, f"request body is {declared} bytes; the limit is {limit} (server.max_body_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"request body is larger than {limit} bytes (server.max_body_bytes)")
    return bytes(body)


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def json_depth(body: bytes) -> int:
    """How deep a JSON document nests, found without parsing it (a hostile body cannot recurse us).

    Strings are cut out, every bracket becomes +1 or -1, and the deepest running sum is the
    depth: all of it C-speed, about 30 ms for a megabyte of brackets.
    """
    steps = _STRINGS.sub(b"", body).translate(_STEPS, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


async def read_json_body(request: Request, limit: int, max_depth: int) -> bytes:
    """The body of a JSON request, bounded in size (413) and nesting (422)."""
    body = await read_body(request, limit)
    if json_depth(body) > max_depth:
        raise APIError(422, f"request body nests deeper than {max_depth} levels (server.max_json_depth)")
    return body


def int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = ascii_number(raw.removeprefix("-"))
    if value is None:
        raise APIError(400, f"query parameter {name}={raw[:50]!r} is not an integer")
    value = -value if raw.startswith("-") else value
    if not minimum <= value <= maximum:
        raise APIError(400, f"query parameter {name} must be between {minimum} and {maximum}")
    return value


async def json_body(request: Request) -> bytes:
    """A JSON request body within the configured limits (``server.max_body_bytes``, ``server.max_json_depth``)."""
    server = gateway_of(request).config.server
    return await read_json_body(request, server.max_body_bytes, server.max_json_depth)
