"""The ASGI application: the gateway's routes and middleware around a :class:`Gateway`.

:func:`create_app` builds the Starlette app; its lifespan starts the gateway's services and
hands them to every request as lifespan state (``gateway.services.gateway_of``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from gateway import console
from gateway.config import Config
from gateway.endpoints import apidoc, kraken, legacy, metrics, mirror, openapi, probes
from gateway.endpoints.jsonio import APIError, error_response
from gateway.jobs import InvalidRequest
from gateway.middleware.auth import AuthMiddleware
from gateway.middleware.listener import ListenerSplitMiddleware
from gateway.middleware.observe import ObserveMiddleware
from gateway.middleware.prefix import PathPrefixMiddleware
from gateway.middleware.startup import StartupRefusalMiddleware
from gateway.ratelimit import RateLimited
from gateway.routing import allowed_methods
from gateway.services import Gateway, gateway_of
from gateway.store import StoreUnavailable

log = logging.getLogger("gateway")


async def _invalid_request(_request: Request, error: Exception) -> Response:
    return error_response(422, str(error))


async def _api_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return error_response(error.status, error.message, error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(error.status_code, str(error.detail))
    headers = dict(error.headers or {})
    if error.status_code == 405:  # Starlette names the first matching route's methods only
        headers["Allow"] = ", ".join(allowed_methods(request.app.routes, request.scope))
    return error_response(error.status_code, message, headers)


async def _rate_limited(request: Request, error: Exception) -> Response:
    assert isinstance(error, RateLimited)
    gateway_of(request).metrics.rate_limited.inc()
    return error_response(429, str(error), {"Retry-After": str(error.retry_after)})


async def _store_unavailable(_request: Request, error: Exception) -> Response:
    log.error("store unavailable: %s", error)
    return error_response(503, "the job store is unavailable; retry shortly", {"Retry-After": "5"})


async def _internal_error(request: Request, error: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal error; the gateway log has the details")


def create_app(config: Config, *, tune_process: bool = False) -> Starlette:
    """The gateway as an ASGI app; ``tune_process`` (the ``serve`` command) also tunes the process's collector."""
    gateway = Gateway(config, tune_process=tune_process)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Gateway]]:
        try:
            await gateway.start()
        except StoreUnavailable as error:  # e.g. another process holds the SQLite file: one line, no traceback
            app.state.startup_refusal = f"cannot start: {error}"
            raise
        app.state.ready = True
        try:
            yield {"gateway": gateway}
        finally:
            app.state.ready = False
            await gateway.stop()

    routes = [
        *probes.routes(),
        *metrics.routes(),
        *apidoc.routes(),
        *openapi.routes(),
        *legacy.routes(),
        *kraken.routes(),
        *console.routes(),
        *mirror.routes(),
    ]
    # Status polls, most of what Harbor sends, are matched first: Starlette tries routes in order.
    routes.sort(key=lambda route: getattr(route, "path", "") not in ("/oapi/v1/jobs/{id:int}", "/preheats/{id}"))
    app = Starlette(
        routes=routes,
        middleware=[
            *([Middleware(PathPrefixMiddleware, root_path=config.server.root_path)] if config.server.root_path else []),
            *([Middleware(ListenerSplitMiddleware)] if config.server.mirror_listen else []),
            Middleware(ObserveMiddleware, metrics=gateway.metrics, routes=routes),
            Middleware(AuthMiddleware, authenticator=gateway.auth, anonymous_pull=config.server.mirror_anonymous),
        ],
        exception_handlers={
            InvalidRequest: _invalid_request,
            APIError: _api_error,
            HTTPException: _http_error,
            RateLimited: _rate_limited,
            StoreUnavailable: _store_unavailable,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.add_middleware(StartupRefusalMiddleware, app_state=app.state)
    app.state.ready = False
    return app
