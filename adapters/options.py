"""Checking an adapter's ``Options`` as the config is loaded: base URLs, durations, secrets named by ``*_env``.

Each raises ``ValueError`` naming the key, which the gateway reports with the cluster's path
(``clusters[2].endpoints[0].url: ...``). Kept in ``adapters`` because adapters never import the gateway.
"""

from __future__ import annotations

import os

from adapters.durations import parse_duration
from adapters.urlpolicy import RefusedURL, split_http_url


def parse_seconds(value: float | int | str, *, key: str) -> float:
    """A positive duration (:func:`adapters.durations.parse_duration`) as seconds; ``ValueError`` names ``key``."""
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None
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
