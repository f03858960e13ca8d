"""Typed access to the running :class:`gateway.app.Gateway` from a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

if TYPE_CHECKING:
    from gateway.app import Gateway


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway
