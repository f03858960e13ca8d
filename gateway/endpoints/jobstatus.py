"""``GET`` of one job's status, the request Harbor sends most: an ASGI app under the same router,
middleware and exception handlers as every route, answering in two ``send`` calls.

It builds no Starlette ``Request`` or ``Response`` and skips the per-request exception wrapper
of a function endpoint (the application's handlers still turn an ``APIError`` into its reply):
that is an eighth of a poll's cost (docs/design.md, "Status polling").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import Receive, Scope, Send

from gateway.endpoints.jsonio import APIError
from gateway.services import Gateway, gateway_in
from gateway.store import JobRecord

JobIdOf = Callable[[Mapping[str, Any]], int]
"""The job id in a route's path parameters; raises ``APIError(404)`` for one that cannot exist."""
Render = Callable[[Gateway, JobRecord], bytes]


class JobStatus:
    """One dialect's status reply, from the status cache (:mod:`gateway.statuscache`) or the store."""

    def __init__(self, dialect: str, job_id_of: JobIdOf, render: Render, not_found: str) -> None:
        self.dialect = dialect
        self.job_id_of = job_id_of
        self.render = render
        self.not_found = not_found
        """The 404's message, formatted with the ``id``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = gateway_in(scope)
        job_id = self.job_id_of(scope["path_params"])
        statuses = gateway.statuses
        body = statuses.fresh(self.dialect, job_id) or await statuses.reply(
            self.dialect, job_id, gateway.jobs.get, lambda job: self.render(gateway, job)
        )
        if body is None:
            raise APIError(404, self.not_found.format(id=job_id))
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
