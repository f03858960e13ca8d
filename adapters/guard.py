"""The URL policy at connect time: a name that changes its answers cannot reach a checked-out address.

:class:`adapters.urlpolicy.URLPolicy` looks a name up when a job is created, a redirect
arrives or a token service is named; aiohttp then looks the name up again when it connects.
A name whose answers change in between (DNS rebinding: a public address when checked,
127.0.0.1 when connected) would carry the gateway's requests, and the credentials in them, to
loopback or private services. So every outbound connector resolves through
:class:`GuardedResolver`: it resolves once, checks every answer with :class:`ConnectGuard`, and
hands aiohttp exactly the checked answers, which aiohttp connects to and keeps for its DNS
cache's ttl (the decision is made once per resolution, never per request).

The rule where a connection is made:

- a host allowed by name (``registries.allow``) or configured by the operator (cluster
  endpoints, mirrors, proxies, the Dragonfly manager, the Kraken endpoint, the JWKS URL) may
  connect to any address it resolves to;
- any other host only when every address it resolves to is public, or inside a CIDR pattern
  of ``registries.allow`` (loopback, private, link-local, metadata and multicast refused).

aiohttp never resolves an IP-literal URL, so :meth:`ConnectGuard.check_literal` judges one by
its IP before the request goes out. Through an HTTP proxy the proxy resolves the target: the
gateway then checks the name only (when the job is created and at each redirect) and the guard
admits the proxy itself, which the operator configured.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from adapters.urlpolicy import URLPolicy, _is_public

_LITERAL_MEMO = 4096
"""Verdicts on IP-literal hosts kept per guard (cleared when full): one dict lookup per request."""


class AddressRefused(OSError):
    """Raised inside aiohttp's resolver: the host's answers may not be connected to."""


class RefusedConnection(httpx.ConnectError):
    """The connection was refused by the URL policy before any byte was sent; the message says why.

    A ``ConnectError`` (never sent), so every caller that handles transport errors reports it.
    """


class ConnectGuard:
    """Which (host, port) may connect to which addresses: the policy plus the operator's own endpoints."""

    def __init__(self, policy: URLPolicy | None = None, *, configured: Iterable[str] = ()) -> None:
        self.policy = policy if policy is not None else URLPolicy()
        self.configured: frozenset[tuple[str, int]] = frozenset(
            endpoint for url in configured if (endpoint := _endpoint(url)) is not None
        )
        # CIDR patterns admit the addresses inside them, whatever name led there; a plain IP pattern
        # (``127.0.0.1``) names a host, as at create time: it admits that IP-literal URL only.
        self._networks = tuple(ipaddress.ip_network(p, strict=False) for p in self.policy.allow if "/" in p)
        self._literals: dict[tuple[str, int | None, str], str | None] = {}

    def including(self, urls: Iterable[str]) -> ConnectGuard:
        """This guard also trusting the hosts of ``urls`` (a proxy the transport was given)."""
        extra = {endpoint for url in urls if (endpoint := _endpoint(url)) is not None} - self.configured
        if not extra:
            return self
        guard = ConnectGuard(self.policy)
        guard.configured = self.configured | extra
        return guard

    def trusts(self, host: str, port: int) -> bool:
        """True when ``host:port`` may connect to any address: allowed by name, or configured."""
        host = _normal(host)
        return (host, port) in self.configured or self.policy.allowed_by_name(host, port)

    def refusal(self, host: str, port: int, addresses: Sequence[str]) -> str | None:
        """Why ``host:port`` may not connect to ``addresses`` (None when it may)."""
        if self.trusts(host, port):
            return None
        for address in addresses:
            if not self._address_allowed(address):
                return (
                    f"host {_netloc(_normal(host), port)} resolved to {address}, a non-public address, at connect time: "
                    f"loopback, private, link-local and metadata addresses are refused unless the host is listed in "
                    f"{self.policy.config_key}"
                )
        return None

    def check(self, host: str, port: int, addresses: Sequence[str]) -> None:
        """Raise :class:`AddressRefused` when ``host:port`` may not connect to ``addresses``."""
        if (why := self.refusal(host, port, addresses)) is not None:
            raise AddressRefused(why)

    def literal_refusal(self, url: httpx.URL) -> str | None:
        """Why an IP-literal URL may not be connected to (None when it may, or when its host is a
        name, which the resolver judges). Memoized: this runs once per request."""
        key = (url.host, url.port, url.scheme)
        try:
            return self._literals[key]
        except KeyError:
            why = self._literal_refusal(url)
            if len(self._literals) >= _LITERAL_MEMO:
                self._literals.clear()
            self._literals[key] = why
            return why

    def _literal_refusal(self, url: httpx.URL) -> str | None:
        host = _normal(url.host)
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        port = url.port or (443 if url.scheme == "https" else 80)
        if self.trusts(host, port) or self._address_allowed(host):
            return None
        return (
            f"address {_netloc(host, port)} is not public: loopback, private, link-local and metadata addresses "
            f"are refused at connect time unless listed in {self.policy.config_key}"
        )

    def _address_allowed(self, address: str) -> bool:
        try:
            if _is_public(address):
                return True
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)


class GuardedResolver(AbstractResolver):
    """aiohttp's own resolver, with every answer checked by ``guard`` before aiohttp may use it."""

    def __init__(self, guard: ConnectGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        self._guard.check(host, port, [answer["host"] for answer in answers])
        return answers

    async def close(self) -> None:
        await self._inner.close()


def urls_in(value: Any) -> list[str]:
    """Every http(s) URL in ``value`` (structs, dicts and lists walked): the operator's endpoints in
    adapter options, whatever the adapter calls its keys."""
    found: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, str):
            if item.startswith(("http://", "https://")) and _endpoint(item) is not None:
                found.append(item)
        elif isinstance(item, dict):
            for child in item.values():
                walk(child)
        elif isinstance(item, (list, tuple)):
            for child in item:
                walk(child)

    try:
        walk(msgspec.to_builtins(value))
    except (TypeError, ValueError):  # an option type msgspec cannot render: walk what it can
        if isinstance(value, (list, tuple)):
            for item in value:
                found.extend(urls_in(item))
    return found


def _endpoint(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return _normal(parts.hostname), port or (443 if parts.scheme == "https" else 80)


def _normal(host: str) -> str:
    """Lower case, no brackets, no trailing dot: the form patterns and configured hosts compare in."""
    return host.strip("[]").lower().removesuffix(".")


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
