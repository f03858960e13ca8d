"""``/openapi.json``: the OpenAPI document describing this gateway's HTTP API (:mod:`gateway.openapi`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.httputil import json_response
from gateway.openapi import document


async def openapi_document(request: Request) -> Response:
    gateway = request.app.state.gateway
    return json_response(document(gateway.version, gateway.config.server.max_page_size))


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_document, methods=["GET"])]
