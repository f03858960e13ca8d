"""What may be kept and shown of text that came from outside: URLs without secrets, quotes cut short.

Two rules, each one function used everywhere the gateway stores or renders such text:

- :func:`public_url`: a URL without user-info and without signing parameters. A password in
  ``http://user:pw@host/`` or an ``X-Amz-Signature`` in a pre-signed URL is a credential; the
  full URL is sealed with the job's secrets (the runner fetches it), and this is the form that
  goes into the store's clear columns, API responses, the console and messages.
- :func:`clip`: a quote (an adapter's row description or error, which may quote a registry)
  with control characters replaced and cut to a few hundred characters, marked as cut, so a
  hostile registry cannot grow a job's status, the store or a Harbor log line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from adapters.base import TaskRow
from adapters.files import DEFAULT_FILTERED_QUERY_PARAMS

QUOTE_CHARS = 500
"""A row description (what one blob's failure said) is cut to this many characters."""
ERROR_CHARS = 1000
"""A task's error (an adapter's message, which may join several endpoints' errors) is cut to this many."""
CUT = "…[cut]"
URL_CHARS = 2048
"""A row's URL (an adapter's, third-party ones too) is cut to this many characters."""

_SIGNING_NAME = re.compile(
    r"signature|token|secret|passw|credential|api[-_]?key|^sig$|^key$|^auth|^pwd$|^code$|security",
    re.IGNORECASE,
)
"""Query parameter names that carry a credential beyond Dragonfly's default filtered list
(Azure's ``sig``, ``token``, ``access_token``, ``X-Goog-Signature``, ``api_key``, ...)."""
_ALWAYS = frozenset(name.lower() for name in DEFAULT_FILTERED_QUERY_PARAMS)
_CONTROLS = re.compile(
    r" *[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][\x00-\x20\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*"
)
"""C0/C1 controls (CR, LF, ESC, NUL, ...) and the bidirectional overrides that can make a line read differently."""
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,20}://)[^/?#\s@'\"<>]*@")


def has_userinfo(url: str) -> bool:
    """True when ``url``'s authority names a user (``user@``, ``user:pw@``), or the URL hides one oddly."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return "@" in url
    return "@" in netloc


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:pw@`` in its authority (unparseable URLs lose anything that looks like one)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_USERINFO.sub(r"\1", url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def is_signing_param(name: str, filtered: Iterable[str] = ()) -> bool:
    """Whether a query parameter is a credential: Dragonfly's filtered list, the caller's, or a secret-looking name."""
    lowered = name.lower()
    return lowered in _ALWAYS or lowered in {f.lower() for f in filtered} or bool(_SIGNING_NAME.search(name))


def public_url(url: str, filtered: Iterable[str] = ()) -> str:
    """``url`` as the gateway may store and show it: no user-info, no signing parameters, no fragment.

    A parameter goes when Dragonfly's default ``filtered_query_params`` or the caller's name it,
    or its name says it is a secret (``sig``, ``token``, ``X-Goog-Signature``...). Everything
    else is kept as it was, so the URL still says what was preheated.
    """
    url = strip_userinfo(str(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return clip(url, URL_CHARS)
    if not parts.query and not parts.fragment:
        return url
    names = [str(name) for name in filtered]
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not is_signing_param(k, names)]
    return urlunsplit(parts._replace(query=urlencode(kept), fragment=""))


def clip(text: object, limit: int = QUOTE_CHARS) -> str:
    """``text`` on one line, control characters replaced by a space, cut to ``limit`` characters ending in ``…[cut]``.

    Idempotent (a clipped text is clipped again unchanged), and it never looks at more than a
    few times ``limit`` characters, so a megabyte-long quote costs microseconds.
    """
    value = text if isinstance(text, str) else str(text)
    cut = len(value) > limit
    if len(value) > 4 * limit:
        value = value[: 4 * limit]
    value = _CONTROLS.sub(" ", value).strip()
    if cut or len(value) > limit:
        return value[: max(0, limit - len(CUT))].rstrip() + CUT
    return value


def quotes_userinfo(text: str) -> bool:
    """Whether ``text`` quotes a URL with user-info (a C-speed scan, for deciding whether to look closer)."""
    return "@" in text and _URL_USERINFO.search(text) is not None


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without any of ``secrets`` and without user-info in URLs it quotes (for text stored before the rules)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "" if secret.endswith("@") else "(hidden)")
    return _URL_USERINFO.sub(r"\1", text) if "@" in text else text


def userinfo_of(urls: Iterable[str]) -> list[str]:
    """The ``user:pw@`` strings (and the passwords alone) in ``urls``: what :func:`scrub` hides from old texts."""
    found: list[str] = []
    for url in urls:
        try:
            netloc = urlsplit(str(url)).netloc
        except ValueError:
            continue
        if "@" in netloc:
            userinfo = netloc.rpartition("@")[0]
            found.append(userinfo + "@")
            password = userinfo.partition(":")[2]
            if len(password) >= 4:
                found.append(password)
    return sorted(set(found), key=len, reverse=True)


def stored_row(row: TaskRow, secrets: Iterable[str] = (), filtered: Iterable[str] = ()) -> TaskRow:
    """A result row as it may be stored and shown: its quote clipped, its URL without secrets, every field bounded."""
    url = row.url if isinstance(row.url, str) else str(row.url)
    if "@" in url or "?" in url or "#" in url or len(url) > URL_CHARS:
        url = clip(public_url(url, filtered), URL_CHARS)
    description = clip(scrub(row.description, secrets), QUOTE_CHARS) if row.description else ""
    return TaskRow(url=url, hostname=clip(row.hostname, 255), ip=clip(row.ip, 64), description=description)


def stored_error(message: object) -> str:
    """An adapter's failure message as a task's error: on one line, at most ``ERROR_CHARS`` characters."""
    return clip(message, ERROR_CHARS)


def public_args(args: dict[str, object]) -> dict[str, object]:
    """A job's stored arguments with every URL in its public form (for rows stored before these rules)."""
    urls = args.get("urls")
    if not isinstance(urls, list):
        return args
    filtered = args.get("filtered_query_params")
    names = [str(n) for n in filtered] if isinstance(filtered, list) else []
    public = [public_url(str(url), names) if ("@" in str(url) or "?" in str(url)) else url for url in urls]
    return args if public == urls else {**args, "urls": public}
