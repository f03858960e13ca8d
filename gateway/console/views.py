"""The console's pages: sign in, list, create, follow and cancel preheats, and see clusters.

Server-rendered with Jinja2. Every page needs a session (see :mod:`gateway.console.session`)
unless authentication is off (``auth.mode: none``), in which case everyone is ``anonymous``
and gets a session silently (forms still need their CSRF token). Bad input re-renders the
page with a message; nothing here answers a person with a 500 or a JSON error page.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from adapters.base import SCOPES
from adapters.files import DEFAULT_FILTERED_QUERY_PARAMS
from gateway.auth import Unauthorized
from gateway.console import present
from gateway.console.session import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    SIGNIN_SECONDS,
    Session,
    Sessions,
    clear_cookie,
    set_cookie,
)
from gateway.console.throttle import SigninThrottle, client_key
from gateway.dialects import openapi
from gateway.endpoints.jsonio import APIError, read_body
from gateway.ids import ascii_number
from gateway.jobs import InvalidRequest
from gateway.services import gateway_of
from gateway.store import JOB_STATES, JobRecord

HERE = Path(__file__).parent
STATIC = HERE / "static"
PER_PAGE = 20
MAX_REFRESH_IDS = 100
MAX_ID = 2**63 - 1
NOTICES = {
    "created": "The preheat was created; this page follows it until it ends.",
    "canceled": "The preheat was canceled; its unfinished clusters are marked failed.",
    "finished": "The preheat had already finished; nothing was canceled.",
    "signed_out": "You are signed out.",
    "expired": "Your session ended; sign in again.",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
log = logging.getLogger("gateway.console")

Handler = Callable[[Request, Session], Awaitable[Response]]


def _static_version() -> str:
    """Changes whenever a static file does, so browsers never keep a stale script after an upgrade."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.glob("*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


_VERSION = _static_version()
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_templates.globals.update(
    timestamp=present.timestamp,
    iso=present.iso,
    duration=present.duration,
    job_duration=present.job_duration,
    size=present.size,
    badge=present.badge,
    subject=present.subject,
    job_urls=present.job_urls,
    cluster_name=present.cluster_name,
    total_progress=present.total_progress,
    started_at=present.started_at,
    display_url=present.display_url,
    job_badge=present.job_badge,
    task_badge=present.task_badge,
    job_updated=present.job_updated,
    progress_view=present.progress_view,
    kind_of=present.kind_of,
)


# --- plumbing -----------------------------------------------------------------------------------


def _sessions(request: Request) -> Sessions:
    """One signer per app, made on first use (the store's key file exists by then)."""
    state = request.app.state
    sessions = getattr(state, "console_sessions", None)
    if sessions is None:
        sessions = state.console_sessions = Sessions.for_config(gateway_of(request).config)
    return sessions


def _base(request: Request) -> str:
    return request.scope.get("root_path", "") + "/console"


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _render_text(request: Request, template: str, session: Session | None, **context: Any) -> str:
    base = _base(request)
    return _templates.get_template(template).render(
        base=base,
        static=lambda name: f"{base}/static/{name}?v={_VERSION}",
        session=session,
        csrf=_sessions(request).csrf_token(session) if session else "",
        auth_enabled=gateway_of(request).auth.enabled,
        **context,
    )


def _render(request: Request, template: str, session: Session | None, status: int = 200, **context: Any) -> Response:
    return _secure(HTMLResponse(_render_text(request, template, session, **context), status_code=status))


def _redirect(url: str) -> Response:
    return _secure(RedirectResponse(url, status_code=303))


def _set_session_cookie(request: Request, response: Response, session: Session) -> None:
    set_cookie(
        request, response, SESSION_COOKIE, _sessions(request).encode(session), max(1, int(session.exp - time.time()))
    )


async def _current(request: Request) -> Session | None:
    sessions = _sessions(request)
    session = sessions.decode(request.cookies.get(SESSION_COOKIE))
    if session is not None and not await sessions.still_valid(session, gateway_of(request).store):
        return None
    return session


def page(handler: Handler, *, fragment: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Run ``handler`` for a signed-in person; everyone else goes to the sign-in page (a fragment: 401)."""

    async def endpoint(request: Request) -> Response:
        session = await _current(request)
        fresh = False
        if session is None:
            if gateway_of(request).auth.enabled:
                if fragment:
                    return _secure(JSONResponse({"errors": "signed out: reload the page to sign in"}, status_code=401))
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                if request.method != "GET":  # a form cannot be replayed after sign-in: start from the list
                    target = f"{_base(request)}/preheats"
                notice = "&notice=expired" if SESSION_COOKIE in request.cookies else ""
                response = _redirect(f"{_base(request)}/signin?next={quote(target, safe='')}{notice}")
                if SESSION_COOKIE in request.cookies:
                    clear_cookie(request, response, SESSION_COOKIE)
                return response
            session, fresh = _sessions(request).new("anonymous", "none"), True
        response = await handler(request, session)
        if fresh:
            _set_session_cookie(request, response, session)
        return response

    return endpoint


async def _form(request: Request) -> tuple[dict[str, list[str]], str]:
    """The posted form, or an empty one and what was wrong with it."""
    try:
        body = await read_body(request, gateway_of(request).config.server.max_body_bytes)
    except APIError as error:
        return {}, error.message
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}, "the form must be posted as application/x-www-form-urlencoded"
    try:
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=2000), ""
    except ValueError:
        return {}, "the form has too many fields"


def _number(text: str) -> int | None:
    """A positive integer a database can hold, from a query or form field; None for anything else."""
    return ascii_number(text) or None


def _one(form: Mapping[str, list[str]], name: str) -> str:
    values = form.get(name)
    return values[0] if values else ""


def _csrf_refused(request: Request, session: Session) -> Response:
    log.info("console: refused a form without a valid CSRF token", extra={"path": request.url.path})
    return _render(
        request,
        "error.html",
        session,
        status=403,
        title="Form refused",
        message="This form could not be verified (it is stale or did not come from this console). "
        "Go back, reload the page and submit it again.",
    )


def _safe_next(request: Request, target: str) -> str:
    """Only a console path of this gateway: never an open redirect."""
    base = _base(request)
    if target.startswith(base + "/") and not any(s in target for s in ("//", "\\", "..", "/signin")):
        return target
    return f"{base}/preheats"


# --- sign in and out ----------------------------------------------------------------------------


async def home(request: Request) -> Response:
    return _redirect(f"{_base(request)}/preheats")


def _throttle(request: Request) -> SigninThrottle:
    """One sign-in throttle per app, sized by ``server.signin_failure_burst`` and ``server.signin_failures_per_minute``."""
    state = request.app.state
    throttle = getattr(state, "console_throttle", None)
    if throttle is None:
        server = gateway_of(request).config.server
        throttle = state.console_throttle = SigninThrottle(
            server.signin_failure_burst, server.signin_failures_per_minute
        )
    return throttle


def _signin_form(
    request: Request,
    *,
    error: str = "",
    notice: str = "",
    next_target: str | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The sign-in page; a refused attempt is this page again (200, or 429 when throttled) with the reason, never an error page."""
    sessions = _sessions(request)
    nonce = request.cookies.get(SIGNIN_COOKIE, "")
    if not (20 <= len(nonce) <= 64 and nonce.replace("-", "").replace("_", "").isalnum()):
        nonce = secrets.token_urlsafe(24)
    if next_target is None:
        next_target = request.query_params.get("next", "")
    response = _render(
        request,
        "signin.html",
        None,
        status=status,
        error=error,
        notice=notice,
        signin_csrf=sessions.signin_token(nonce),
        next=_safe_next(request, next_target),
    )
    response.headers.update(headers or {})
    set_cookie(request, response, SIGNIN_COOKIE, nonce, SIGNIN_SECONDS)
    return response


async def signin_page(request: Request) -> Response:
    if not gateway_of(request).auth.enabled or await _current(request) is not None:
        return _redirect(_safe_next(request, request.query_params.get("next", "")))
    return _signin_form(request, notice=NOTICES.get(request.query_params.get("notice", ""), ""))


async def signin(request: Request) -> Response:
    gateway = gateway_of(request)
    sessions = _sessions(request)
    form, problem = await _form(request)
    target = _safe_next(request, _one(form, "next"))
    if problem:
        return _signin_form(request, error=problem, next_target=target)
    if not sessions.check_signin(request.cookies.get(SIGNIN_COOKIE), _one(form, "csrf")):
        return _signin_form(
            request, error="The sign-in form expired or did not come from this console; try again.", next_target=target
        )
    token = _one(form, "token").strip()
    if not token:
        return _signin_form(
            request, error="Enter a personal access token (or a bearer token the gateway accepts).", next_target=target
        )
    failures, client = gateway.auth.failures, client_key(request.client.host if request.client else None)
    wait = _throttle(request).acquire(client)
    if wait:
        failures["signin_throttled"] += 1
        seconds = max(1, math.ceil(wait))
        log.info("console: sign-in throttled", extra={"client": client, "retry_after": seconds})
        return _signin_form(
            request,
            error=f"Too many failed sign-ins from your address; try again in {seconds} s.",
            next_target=target,
            status=429,
            headers={"Retry-After": str(seconds)},
        )
    try:
        principal = await gateway.auth.authenticate({"authorization": f"Bearer {token}"})
    except Unauthorized as error:
        failures[error.kind] += 1
        log.info("console: sign-in refused", extra={"reason": str(error), "kind": error.kind, "client": client})
        return _signin_form(request, error=f"Sign-in failed: {str(error).rstrip('.')}.", next_target=target)
    except Exception:  # e.g. the identity provider's keys are unreachable: a message, not a 500
        failures["unavailable"] += 1
        _throttle(request).refund(client)  # not the person's fault
        log.exception("console: could not check a sign-in credential")
        return _signin_form(
            request, error="The gateway cannot check credentials right now; try again shortly.", next_target=target
        )
    if "job" not in principal.scopes:
        failures["forbidden"] += 1
        return _signin_form(
            request, error=f"Credential {principal.name!r} lacks the 'job' scope the console needs.", next_target=target
        )
    _throttle(request).refund(client)
    session = sessions.new(principal.name, principal.method, not_after=_jwt_expiry(token))
    log.info("console: %s signed in", principal.name, extra={"principal": principal.name, "method": principal.method})
    response = _redirect(target)
    _set_session_cookie(request, response, session)
    clear_cookie(request, response, SIGNIN_COOKIE)
    return response


def _jwt_expiry(token: str) -> float | None:
    """A (verified) JWT's ``exp``: a console session never outlives the credential that opened it."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = msgspec.json.decode(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, msgspec.DecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


async def signout(request: Request) -> Response:
    session = await _current(request)
    form, _problem = await _form(request)
    response = _redirect(f"{_base(request)}/signin?notice=signed_out")
    if session is not None:
        if not _sessions(request).check_csrf(session, _one(form, "csrf")):
            return _csrf_refused(request, session)
        _sessions(request).revoke(session)
        log.info("console: %s signed out", session.name, extra={"principal": session.name})
    clear_cookie(request, response, SESSION_COOKIE)
    return response


# --- preheats -----------------------------------------------------------------------------------


def _row_context(request: Request) -> dict[str, Any]:
    return {"clusters": gateway_of(request).jobs.clusters}


async def preheats(request: Request, session: Session) -> Response:
    gateway = gateway_of(request)
    params = request.query_params
    notices: list[str] = []
    state = params.get("state", "")
    if state and state not in JOB_STATES:
        notices.append(
            f"State {state[:30]!r} is not one of {', '.join(s.lower() for s in JOB_STATES)}; showing every state."
        )
        state = ""
    cluster_text = params.get("cluster", "")
    cluster_id = _number(cluster_text)
    if cluster_text and (cluster_id is None or cluster_id not in gateway.jobs.clusters):
        notices.append(f"There is no cluster {cluster_text[:30]!r}; showing every cluster.")
        cluster_id, cluster_text = None, ""
    text = params.get("q", "").strip()[:200]
    page_number = min(_number(params.get("page", "")) or 1, 1_000_000)
    jobs, total = await gateway.jobs.list_jobs(
        limit=PER_PAGE,
        offset=(page_number - 1) * PER_PAGE,
        state=state or None,
        cluster_id=cluster_id,
        text=text or None,
    )
    last = max(1, -(-total // PER_PAGE))
    filters = {k: v for k, v in (("state", state), ("cluster", cluster_text), ("q", text)) if v}
    created = params.get("created", "")
    return _render(
        request,
        "preheats.html",
        session,
        jobs=jobs,
        total=total,
        page=page_number,
        last=last,
        per_page=PER_PAGE,
        filters=filters,
        state=state,
        cluster=cluster_text,
        q=text,
        states=JOB_STATES,
        notices=notices,
        created=_number(created),
        page_url=lambda n: (
            f"{_base(request)}/preheats?"
            + "&".join([f"{k}={quote(v, safe='')}" for k, v in filters.items()] + [f"page={n}"])
        ),
        **_row_context(request),
    )


async def preheat_rows(request: Request, session: Session) -> Response:
    """Fresh rows for the list's pending preheats: ``{"rows": {"12": "<tr>…"}}`` (gone ones omitted)."""
    gateway = gateway_of(request)
    ids = [i for i in map(_number, request.query_params.getlist("id")) if i is not None][:MAX_REFRESH_IDS]
    rows: dict[str, str] = {}
    for job_id in dict.fromkeys(ids):
        job = await gateway.jobs.get(job_id)
        if job is not None:
            rows[str(job_id)] = _render_text(
                request, "_row.html", session, job=job, created=None, **_row_context(request)
            )
    return _secure(JSONResponse({"rows": rows}))


def _form_values(form: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    """What the create form shows: the defaults, or what was posted (to re-render it)."""
    if form is None:
        return {
            "type": "image",
            "urls": "",
            "clusters": [],
            "tag": "",
            "platform": "",
            "scope": "",
            "bio": "",
            "filtered_query_params": "&".join(DEFAULT_FILTERED_QUERY_PARAMS),
        }
    return {
        "type": _one(form, "type"),
        "urls": _one(form, "urls"),
        "clusters": form.get("clusters", []),
        "tag": _one(form, "tag"),
        "platform": _one(form, "platform"),
        "scope": _one(form, "scope"),
        "bio": _one(form, "bio"),
        "filtered_query_params": _one(form, "filtered_query_params"),
    }


def _create_form(request: Request, session: Session, values: dict[str, Any], errors: dict[str, str]) -> Response:
    """The create page; invalid input is this page again (200: it rendered fine) with each message by its field."""
    return _render(
        request,
        "new.html",
        session,
        values=values,
        errors=errors,
        clusters=gateway_of(request).jobs.clusters,
        scopes=SCOPES,
    )


async def new_preheat(request: Request, session: Session) -> Response:
    return _create_form(request, session, _form_values(), {})


async def create_preheat(request: Request, session: Session) -> Response:
    """The form as a Dragonfly Open API body, so every check (and its words) is the API's own."""
    gateway = gateway_of(request)
    form, problem = await _form(request)
    values = _form_values(form)
    if problem:
        return _create_form(request, session, values, {"": problem})
    if not _sessions(request).check_csrf(session, _one(form, "csrf")):
        return _csrf_refused(request, session)
    urls = [line.strip() for line in values["urls"].splitlines() if line.strip()]
    bad_clusters = [v for v in values["clusters"] if _number(v) is None]
    if bad_clusters:
        return _create_form(request, session, values, {"clusters": f"unknown cluster id {bad_clusters[0][:30]!r}"})
    cluster_ids = [int(v) for v in values["clusters"]]
    body = {
        "type": "preheat",
        "args": {
            "type": values["type"],
            "url": urls[0] if urls else "",
            "urls": urls[1:] or None,
            "tag": values["tag"].strip(),
            "filtered_query_params": values["filtered_query_params"].strip(),
            "platform": values["platform"].strip(),
            "scope": values["scope"],
        },
        "scheduler_cluster_ids": cluster_ids or None,
        "bio": values["bio"],
    }
    try:
        spec = openapi.parse_create(msgspec.json.encode(body), source="console")
        job = await gateway.jobs.create(spec)
    except InvalidRequest as error:
        return _create_form(request, session, values, {present.field_of(str(error)): str(error)})
    log.info(
        "console: %s created preheat %d", session.name, job.id, extra={"principal": session.name, "job_id": job.id}
    )
    return _redirect(f"{_base(request)}/preheats/{job.id}?notice=created")


async def _job_or_404(request: Request, session: Session) -> tuple[JobRecord | None, Response | None]:
    job_id: int = request.path_params["id"]
    job = await gateway_of(request).jobs.get(job_id) if job_id <= MAX_ID else None
    if job is None:
        return None, _render(
            request,
            "error.html",
            session,
            status=404,
            title="Preheat not found",
            message=f"There is no preheat {job_id}: it may have been deleted.",
        )
    return job, None


def _status_context(request: Request, job: JobRecord) -> dict[str, Any]:
    return {"job": job, "clusters": gateway_of(request).jobs.clusters}


async def preheat_detail(request: Request, session: Session) -> Response:
    job, missing = await _job_or_404(request, session)
    if job is None:
        assert missing is not None
        return missing
    notice = NOTICES.get(request.query_params.get("notice", ""), "")
    return _render(request, "detail.html", session, notice=notice, **_status_context(request, job))


async def preheat_status(request: Request, session: Session) -> Response:
    """The detail page's live part, for its auto-refresh: ``{"finished": bool, "html": "…"}``."""
    job_id: int = request.path_params["id"]
    job = await gateway_of(request).jobs.get(job_id) if job_id <= MAX_ID else None
    if job is None:
        return _secure(JSONResponse({"errors": "this preheat no longer exists"}, status_code=404))
    html = _render_text(request, "_status.html", session, **_status_context(request, job))
    return _secure(JSONResponse({"finished": job.finished, "state": present.job_badge(job), "html": html}))


async def cancel_preheat(request: Request, session: Session) -> Response:
    gateway = gateway_of(request)
    form, _problem = await _form(request)
    if not _sessions(request).check_csrf(session, _one(form, "csrf")):
        return _csrf_refused(request, session)
    job, missing = await _job_or_404(request, session)
    if job is None:
        assert missing is not None
        return missing
    canceled = await gateway.jobs.cancel(job.id, by=session.name)
    gateway.statuses.forget(job.id)
    if canceled:
        log.info(
            "console: %s canceled preheat %d", session.name, job.id, extra={"principal": session.name, "job_id": job.id}
        )
    return _redirect(f"{_base(request)}/preheats/{job.id}?notice={'canceled' if canceled else 'finished'}")


# --- clusters and the rest ----------------------------------------------------------------------------


async def clusters(request: Request, session: Session) -> Response:
    gateway = gateway_of(request)
    health = await gateway.health.all()
    rows = [
        {"cluster": c, "options": present.option_rows(c.options), "health": health.get(c.id)}
        for c in gateway.jobs.clusters.values()
    ]
    return _render(request, "clusters.html", session, rows=rows)


async def not_found(request: Request) -> Response:
    session = await _current(request)
    return _render(
        request, "error.html", session, status=404, title="Page not found", message="There is no such console page."
    )
