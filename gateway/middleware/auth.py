"""Every route but the probes needs a credential the :class:`gateway.auth.Authenticator` accepts."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import (
    MIRROR_CHALLENGE,
    PUBLIC_PATHS,
    Authenticator,
    AuthUnavailable,
    Principal,
    Unauthorized,
    is_mirror_path,
)

log = logging.getLogger("gateway.auth")


class AuthMiddleware:
    """Requires a credential on every route except probes, metrics and the console (own sign-in)."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        public_prefixes: tuple[str, ...] = ("/console",),
        anonymous_pull: bool = False,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public_exact = frozenset(PUBLIC_PATHS) | frozenset(public_prefixes)
        self.public_under = tuple(prefix + "/" for prefix in public_prefixes)
        self.anonymous_pull = anonymous_pull  # server.mirror_anonymous

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The inner application's own awaitable when no credential is needed or the one given was
        verified lately (a status poll's case: no coroutine of this middleware's); else :meth:`_checked`."""
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        path = _route_path(scope)
        if path in self.public_exact or path.startswith(self.public_under):
            return self.app(scope, receive, send)
        mirror = is_mirror_path(path)
        if mirror and self.anonymous_pull:
            return self.app(scope, receive, send)
        wanted = self.authenticator.header_names
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in wanted}
        principal = self.authenticator.remembered(headers)
        if principal is not None and ("pull" if mirror else "job") in principal.scopes:
            scope.setdefault("state", {})["principal"] = principal
            return self.app(scope, receive, send)
        return self._checked(scope, receive, send, path, mirror, headers, principal)

    async def _checked(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        mirror: bool,
        headers: dict[str, str],
        principal: Principal | None,
    ) -> None:
        """Verify the credential (unless already remembered), then require the route's scope."""
        reject = _reject_pull if mirror else _reject
        authenticator = self.authenticator
        try:
            if principal is None:
                principal = await authenticator.authenticate(headers, basic=True if mirror else None)
        except Unauthorized as error:
            authenticator.failures[error.kind] += 1
            log.info("authentication failed", extra={"path": path, "reason": str(error), "kind": error.kind})
            await reject(send, 401, f"unauthorized: {error}")
            return
        except AuthUnavailable as error:
            authenticator.failures["unavailable"] += 1
            log.warning("authentication unavailable", extra={"path": path, "reason": str(error)})
            await reject(send, 503, str(error))
            return
        needed = "pull" if mirror else "job"
        if needed not in principal.scopes:
            authenticator.failures["forbidden"] += 1
            log.info("authorization failed", extra={"path": path, "principal": principal.name})
            reason = (
                authenticator.forbidden_reason(principal)
                if not mirror
                else (
                    f"credential {principal.name!r} lacks the 'pull' scope (preheat-gateway token create --scope pull)"
                )
            )
            await reject(send, 403, f"forbidden: {reason}")
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _reject_pull(send: Send, status: int, message: str) -> None:
    """A mirror refusal in the registry API's error shape, with a challenge registry clients follow."""
    code = {401: "UNAUTHORIZED", 403: "DENIED"}.get(status, "UNAVAILABLE")
    body = msgspec.json.encode({"errors": [{"code": code, "message": message}]})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"docker-distribution-api-version", b"registry/2.0"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", MIRROR_CHALLENGE))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _reject(send: Send, status: int, message: str) -> None:
    body = msgspec.json.encode({"errors": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="harbor-preheat-gateway"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
