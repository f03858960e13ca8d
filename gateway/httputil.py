"""Small HTTP helpers shared by every endpoint: bounded bodies and JSON errors.

Every error leaves the gateway as ``{"errors": "<what and how to fix>"}`` (the shape
Dragonfly's manager uses), with a 4xx status for anything the caller can fix.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

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
        if not declared.isdigit():
            raise APIError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise APIError(413, f"request body is {declared} bytes; the limit is {limit} (server.max_body_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"request body is larger than {limit} bytes (server.max_body_bytes)")
    return bytes(body)


def int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"query parameter {name}={raw[:50]!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise APIError(400, f"query parameter {name} must be between {minimum} and {maximum}")
    return value
