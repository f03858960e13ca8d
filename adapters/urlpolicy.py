"""Which URLs the gateway may fetch: the allowlist and the guard against server-side forgery.

Callers hand the gateway URLs to fetch. Without a guard, a token holder could make it read
cloud metadata or an internal service. The rules:

- With an allowlist (``registries.allow``), a caller's URL must name an allowed host.
- Without one, any host whose every DNS answer is a public address is allowed.
- Redirects are followed to allowed hosts, or to hosts whose answers are all public.
- A token service a registry names in its 401 is checked like a caller's URL: with an
  allowlist it must be allowed itself (a registry cannot send the gateway, and its
  credentials, to a host the operator never listed); without one, it must be public.

Patterns: ``host``, ``host:port``, ``*.suffix`` (subdomains only), an IP network in CIDR
form (``10.0.0.0/8``), or ``*`` (anything, including private addresses: use with care).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

DNS_TIMEOUT_SECONDS = 3.0


class RefusedURL(ValueError):
    """The URL may not be fetched; the message says why and which config key would allow it."""


def split_http_url(url: str) -> SplitResult:
    """Parse ``url`` and insist on http(s) with a host, or raise :class:`RefusedURL`."""
    if not isinstance(url, str) or not url:
        raise RefusedURL("url is empty: give an http(s) URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise RefusedURL(f"url {url[:200]!r} is not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedURL(f"url {url[:200]!r} is not an http(s) URL: only http:// and https:// can be preheated")
    if not parts.hostname:
        raise RefusedURL(f"url {url[:200]!r} has no host")
    del port
    return parts


def host_port(parts: SplitResult) -> tuple[str, int]:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.hostname or "").lower(), port


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, port made explicit and host lower-cased: whom a request goes to.

    Credentials are matched on this, never on the host alone: ``https://h`` and ``http://h``
    are different parties (one is in clear). Raises :class:`RefusedURL` for a URL that is not http(s).
    """
    parts = split_http_url(url)
    host, port = host_port(parts)
    return f"{parts.scheme}://{_netloc(host, port)}"


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class URLPolicy:
    """The allowlist, checked for every URL a caller provides and every redirect target."""

    allow: tuple[str, ...] = ()
    config_key: str = "registries.allow"
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        networks = []
        for pattern in self.allow:
            if "/" in pattern:
                networks.append(ipaddress.ip_network(pattern, strict=False))
        object.__setattr__(self, "_networks", tuple(networks))

    def allowed_by_name(self, host: str, port: int) -> bool:
        """True when ``host:port`` matches an allowlist pattern."""
        host = host.lower().strip("[]")
        for pattern in self.allow:
            pattern = pattern.lower()
            if pattern == "*":
                return True
            if "/" in pattern:
                continue
            want_host, _, want_port = pattern.rpartition(":") if _has_port(pattern) else (pattern, "", "")
            if want_port and want_port != "*" and int(want_port) != port:
                continue
            want_host = want_host.strip("[]")
            if want_host.startswith("*."):
                if host.endswith(want_host[1:]) and host != want_host[2:]:
                    return True
            elif host == want_host:
                return True
        if self._networks:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return False
            return any(ip in network for network in self._networks)
        return False

    async def check(self, url: str) -> SplitResult:
        """Check a URL a caller provided. Raises :class:`RefusedURL` with an actionable message."""
        return await self._check_allowed(url, named="", purpose="fetch from it", why="not in an allowlist")

    async def check_redirect(self, url: str) -> SplitResult:
        """Check a redirect target: allowed by name, or every DNS answer public."""
        parts = split_http_url(url)
        host, port = host_port(parts)
        if not self.allowed_by_name(host, port):
            await self._require_public(host, port, why="a redirect target")
        return parts

    async def check_token_service(self, url: str, registry: str) -> SplitResult:
        """Check the token service (``realm``) that ``registry``'s 401 named, as :meth:`check` does a
        caller's URL; the message names it as a token service, so the fix is plain."""
        named = f"the token service {registry} names"
        return await self._check_allowed(url, named=f", {named},", purpose="ask it for tokens", why=named)

    async def _check_allowed(self, url: str, *, named: str, purpose: str, why: str) -> SplitResult:
        """Allowed by name; with an allowlist nothing else is; without one, every DNS answer public."""
        parts = split_http_url(url)
        host, port = host_port(parts)
        if self.allowed_by_name(host, port):
            return parts
        if self.allow:
            raise RefusedURL(
                f"host {_netloc(host, port)}{named} is not allowed: add it to {self.config_key} "
                f"(now {', '.join(self.allow)}) to let the gateway {purpose}"
            )
        await self._require_public(host, port, why=why)
        return parts

    async def _require_public(self, host: str, port: int, *, why: str) -> None:
        addresses = await resolve(host, port)
        private = [a for a in addresses if not _is_public(a)]
        if private:
            raise RefusedURL(
                f"host {_netloc(host, port)} resolves to a non-public address ({private[0]}) and is {why}: "
                f"loopback, private, link-local and metadata addresses are refused unless listed in {self.config_key}"
            )


def _has_port(pattern: str) -> bool:
    if pattern.startswith("["):
        return "]:" in pattern
    return pattern.count(":") == 1


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, bounded in time."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return [host.strip("[]")]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), DNS_TIMEOUT_SECONDS)
    except (OSError, TimeoutError) as error:
        raise RefusedURL(f"host {host} cannot be resolved ({error or 'timed out'}): check the URL") from None
    return sorted({str(info[4][0]) for info in infos})  # an IPv4 or IPv6 address: typeshed allows an int too


async def host_ip(url: str) -> str:
    """The first address ``url``'s host resolves to ("" if it does not), for result rows."""
    parts = urlsplit(url)
    try:
        return (await resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)))[0]
    except (RefusedURL, IndexError):
        return ""
