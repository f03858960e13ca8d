"""One route per path, so a 405's ``Allow`` lists every method the path serves.

Starlette answers a method no route takes with the ``Allow`` of the *first* route whose path
matched: with ``GET /oapi/v1/jobs/{id}``, ``PATCH`` and ``DELETE`` declared as three routes,
``OPTIONS`` (or ``PUT``) was told ``Allow: GET, HEAD``. Merging routes that share a path into
one that dispatches on the method makes the header the exact set the path serves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

Endpoint = Callable[[Request], Awaitable[Response]]


def _dispatcher(handlers: dict[str, Endpoint]) -> Endpoint:
    async def by_method(request: Request) -> Response:
        return await handlers[request.method](request)

    return by_method


def merge_by_path(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """``routes`` with every group of method-restricted :class:`Route` sharing a path made one
    route, standing where the group's first stood."""
    routes = list(routes)
    groups: dict[str, dict[str, Endpoint]] = {}
    for route in routes:
        if isinstance(route, Route) and route.methods is not None:
            handlers = groups.setdefault(route.path, {})
            for method in route.methods:
                handlers.setdefault(method, route.endpoint)
    result: list[BaseRoute] = []
    for route in routes:
        if not isinstance(route, Route) or route.methods is None:
            result.append(route)
        elif route.path in groups:
            handlers = groups.pop(route.path)
            if len({id(handler) for handler in handlers.values()}) == 1:
                result.append(route)
            else:
                result.append(Route(route.path, _dispatcher(handlers), methods=sorted(handlers), name=route.name))
    return result
