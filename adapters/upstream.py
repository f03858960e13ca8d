"""Small helpers shared by the adapters that talk to an upstream service (dragonfly, kraken, mirror, proxy).

Kept here rather than in ``gateway`` because adapters never import the gateway.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from adapters.bounded import QUOTE_CHARS, quote
from adapters.urlpolicy import RefusedURL, resolve, split_http_url

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(value: float | int | str, *, key: str) -> float:
    """``30s``, ``5m``, ``500ms`` or a number of seconds, as seconds; ``ValueError`` names ``key``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if not match:
            raise ValueError(f"{key}: {value!r} is not a duration like 500ms, 30s or 5m")
        seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"{key}: must be more than zero")
    return seconds


def check_base_url(url: str, *, key: str) -> str:
    """An operator-given http(s) base URL without its trailing ``/``; ``ValueError`` names ``key``."""
    try:
        split_http_url(url)
    except RefusedURL as error:
        raise ValueError(f"{key}: {error}") from None
    return url.rstrip("/")


def check_env(name: str | None, *, key: str) -> None:
    """A secret named by ``*_env`` must be set when the config is loaded, not when a job runs."""
    if name and not os.environ.get(name):
        raise ValueError(f"{key}: environment variable {name} is not set")


def check_login(username: str | None, password_env: str | None) -> None:
    """An endpoint's ``username`` and ``password_env`` (mirror caches, proxies): the password set, never alone."""
    check_env(password_env, key="password_env")
    if password_env and not username:
        raise ValueError("password_env: it is set but username is not")


async def host_ip(url: str) -> str:
    """The first address ``url``'s host resolves to ("" if it does not), for result rows."""
    parts = urlsplit(url)
    try:
        return (await resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)))[0]
    except (RefusedURL, IndexError):
        return ""


UPSTREAM_ANSWER_BYTES = 16 << 20
"""The most an upstream (a Dragonfly manager, Kraken) may answer one request with: a job with its rows."""
UPSTREAM_PROBE_BYTES = 64 << 10
"""The most a health probe's answer is read to."""


def body_excerpt(body: bytes) -> str:
    """An upstream's answer in one line, cut short, for quoting its complaint."""
    return quote(body[: 4 * QUOTE_CHARS].decode("utf-8", "replace"))
