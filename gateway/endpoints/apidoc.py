"""``/openapi.json``: the OpenAPI document describing this gateway's HTTP API (:mod:`gateway.apidoc`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.apidoc import document
from gateway.endpoints.jsonio import json_response
from gateway.services import gateway_of


async def openapi_document(request: Request) -> Response:
    gateway = gateway_of(request)
    return json_response(document(gateway.version, gateway.config.server.max_page_size))


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_document, methods=["GET"])]
