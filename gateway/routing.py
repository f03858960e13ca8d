"""A 405's ``Allow`` lists every method the path serves.

Starlette answers a method no route takes with the ``Allow`` of the *first* route whose path
matched: with ``GET /oapi/v1/jobs/{id}``, ``PATCH`` and ``DELETE`` declared as three routes,
``OPTIONS`` (or ``PUT``) was told ``Allow: GET, HEAD``. The routes stay as declared (a
dispatcher per path would add a call to every request); the header is computed when a 405 is
answered, from every route whose path matches.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods of every route whose path matches the request's, sorted."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods is not None and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)
