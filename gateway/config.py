"""The configuration file: YAML decoded strictly into typed structs.

An unknown key or a wrong type is an error naming its path (``clusters[2].endpoints[0].url:
not an http(s) URL``). Sections and clusters are decoded one by one so that ``check-config``
can report every error at once, not just the first. Secrets come from the environment
(``*_env``) or from files (``*_file``), never inline.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal

import msgspec
import msgspec.inspect
import yaml

from adapters import registry as adapter_registry
from adapters.base import Credentials, OriginTLS
from adapters.bounded import BODY_SECONDS
from adapters.durations import parse_duration
from adapters.oci import (
    MANIFEST_CACHE_BYTES,
    MAX_BLOB_BYTES,
    MAX_ERROR_BODY_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_TOKEN_BYTES,
    ReadLimits,
)
from adapters.origintls import read_ca_file, ssl_context
from adapters.ratefloor import TransferFloor
from adapters.reference import parse_platform
from adapters.transport import tls_authority
from adapters.urlpolicy import URLPolicy

CONFIG_ENV = "PREHEAT_GATEWAY_CONFIG"
STATE_DIR_ENV = "PREHEAT_GATEWAY_STATE_DIR"


class ConfigError(Exception):
    """One or more problems in a config file, each ``path: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def default_state_dir() -> Path:
    if env := os.environ.get(STATE_DIR_ENV):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "preheat-gateway"


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TLSConfig(_Section):
    cert: str
    """PEM certificate (chain) file; Harbor's "Skip certificate verification" accepts a self-signed one."""
    key: str
    """PEM private key file."""


class ServerConfig(_Section):
    listen: str = "127.0.0.1:8080"
    """``host:port`` to listen on."""
    tls: TLSConfig | None = None
    """Serve HTTPS with this certificate and key (``cert``, ``key``)."""
    root_path: str = ""
    """Path prefix when served behind a reverse proxy under a sub-path (``/harbor``)."""
    state_dir: str = ""
    """Where the embedded SQLite store, the secret key and the local cache live."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 above)."""
    max_urls: int = 1000
    """Most URLs in one file preheat."""
    max_page_size: int = 100
    """Largest ``per_page`` of a list."""
    max_json_depth: int = 32
    """Deepest nesting of a JSON body."""
    create_rate_per_second: float = 100.0
    """Job creations per second allowed to one credential (0: unlimited); 429 beyond."""
    create_burst: int = 5000
    """How many creations one credential may make at once before the rate applies."""
    header_timeout_seconds: float = 10.0
    """A new connection, or a kept-alive one that started its next request, must send the whole request head (request line and headers) within this; else 408 and closed. Also the TLS handshake's limit."""
    body_timeout_seconds: float = 30.0
    """A request body must be complete within this of its head; else 408 and closed."""
    keep_alive_seconds: float = 65.0
    """A kept-alive connection idle this long is closed (Harbor polls every 10 s on one)."""
    max_header_bytes: int = 64 * 1024
    """Largest request line plus headers accepted (431 and closed above)."""
    max_connections: int = 10_000
    """Most open connections; at the cap the one that has waited longest without a complete request head is closed to admit a new one. Lowered to fit the open-file limit."""
    max_in_flight_requests: int = 4096
    """Most requests being processed at once (503 beyond); idle connections never count."""
    signin_failure_burst: int = 10
    """Console sign-in failures one client address (an IPv6 /64) may make before it must wait (429 with Retry-After)."""
    signin_failures_per_minute: float = 6.0
    """How fast that allowance refills."""
    mirror_listen: str = ""
    """``host:port`` of a listener of its own for the registry mirror (``/v2/``), e.g. on the node network; then the mirror is not served on ``listen`` and the API is not served here. Empty: the mirror is served on ``listen``."""
    mirror_anonymous: bool = False
    """Serve the mirror (``/v2/``) without credentials, for fleets of public images only (a warning is logged at start); otherwise pulls need a token with the ``pull`` scope."""
    shutdown_delay_seconds: float = 5.0
    """On SIGTERM, how long ``/readyz`` answers 503 while requests are still served (each with ``Connection: close``), so a load balancer's health check takes the replica out before its listener closes. Then requests in flight drain (up to 10 s) and unfinished tasks are handed back."""

    def __post_init__(self) -> None:
        host, _, port = self.listen.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"listen: {self.listen!r} is not host:port")
        if self.mirror_listen:
            mirror_host, _, mirror_port = self.mirror_listen.rpartition(":")
            if (
                not mirror_host
                or not (mirror_port.isascii() and mirror_port.isdigit())
                or not 0 < int(mirror_port) < 65536
            ):
                raise ValueError(f"mirror_listen: {self.mirror_listen!r} is not host:port")
            if self.mirror_listen == self.listen:
                raise ValueError(
                    "mirror_listen: must differ from listen (leave it empty to serve the mirror on listen)"
                )
        for name in ("header_timeout_seconds", "body_timeout_seconds", "keep_alive_seconds"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name}: must be more than 0 and at most 3600")
        if not 1024 <= self.max_header_bytes <= 16 << 20:
            raise ValueError("max_header_bytes: must be between 1024 and 16 MiB")
        if self.max_connections < 1 or self.max_in_flight_requests < 1:
            raise ValueError("max_connections and max_in_flight_requests: must be at least 1")
        if self.signin_failure_burst < 1 or self.signin_failures_per_minute <= 0:
            raise ValueError("signin_failure_burst must be at least 1 and signin_failures_per_minute more than 0")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ValueError(f"root_path: {self.root_path!r} must start with / and not end with /")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes: must be at least 1024")
        if not 0 <= self.shutdown_delay_seconds <= 300:
            raise ValueError("shutdown_delay_seconds: must be between 0 and 300")

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def mirror_address(self) -> tuple[str, int] | None:
        """``mirror_listen`` as (host, port), or None when the mirror shares ``listen``."""
        if not self.mirror_listen:
            return None
        host, _, port = self.mirror_listen.rpartition(":")
        return host.strip("[]"), int(port)


class StoreConfig(_Section):
    url: str = ""
    """``sqlite:///path/gateway.db`` (default: in the state directory) or ``postgresql://...``."""
    secret_key_env: str | None = None
    """Environment variable holding the key that encrypts registry credentials at rest."""
    secret_key_file: str | None = None
    """File holding that key; generated (mode 0600) when missing. Default: state_dir/secret.key."""

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"url: {self.url!r} is neither sqlite:///PATH nor postgresql://...")
        if self.secret_key_env and not os.environ.get(self.secret_key_env):
            raise ValueError(f"secret_key_env: environment variable {self.secret_key_env} is not set")


JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "cookie",
        "user-agent",
    }
)


class JWTConfig(_Section):
    """Bearer JWTs minted by an identity provider (Harbor's OAUTH mode with an IdP token).

    Only asymmetric algorithms are accepted: with HS256 anyone holding the published key
    could mint tokens, and ``alg: none`` is never accepted.
    """

    issuer: str
    """The ``iss`` every token must carry."""
    audience: str
    """A value the token's ``aud`` must contain."""
    jwks_url: str | None = None
    """The provider's JWKS; fetched on first use and cached for ``jwks_cache_seconds``."""
    public_key_file: str | None = None
    """Instead of ``jwks_url``: a PEM public key or certificate, or a JWK / JWKS JSON file."""
    scope: str = "job"
    """The scope (in the ``scope`` or ``scp`` claim) that grants running preheat jobs."""
    algorithms: list[str] = msgspec.field(default_factory=lambda: list(JWT_ALGORITHMS))
    jwks_cache_seconds: float = 300.0
    leeway_seconds: float = 30.0
    """Clock skew tolerated on ``exp`` and ``nbf``."""

    def __post_init__(self) -> None:
        if bool(self.jwks_url) == bool(self.public_key_file):
            raise ValueError("jwks_url: give exactly one of jwks_url or public_key_file")
        if self.jwks_url and not re.match(r"^https?://[^/\s]+", self.jwks_url):
            raise ValueError(f"jwks_url: {self.jwks_url!r} is not an http(s) URL")
        if self.public_key_file:
            try:
                head = Path(self.public_key_file).read_bytes()[:4096].lstrip()
            except OSError as error:
                raise ValueError(f"public_key_file: cannot read {self.public_key_file} ({error.strerror})") from None
            if not head.startswith((b"-----BEGIN", b"{")):
                raise ValueError(
                    f"public_key_file: {self.public_key_file} is neither a PEM key or certificate nor a JWK/JWKS JSON file"
                )
        if not self.issuer:
            raise ValueError("issuer: must not be empty")
        if not self.audience:
            raise ValueError("audience: must not be empty")
        if not self.scope:
            raise ValueError("scope: must not be empty")
        unsupported = [a for a in self.algorithms if a not in JWT_ALGORITHMS]
        if unsupported or not self.algorithms:
            raise ValueError(
                f"algorithms: {', '.join(unsupported) or 'empty list'} not accepted; choose from {', '.join(JWT_ALGORITHMS)} "
                "(HS* would let anyone holding the public key forge tokens, and 'none' is never accepted)"
            )
        if not 0 <= self.leeway_seconds <= 300:
            raise ValueError("leeway_seconds: must be between 0 and 300")
        if self.jwks_cache_seconds < 1:
            raise ValueError("jwks_cache_seconds: must be at least 1")


class AuthConfig(_Section):
    mode: Literal["required", "none"] = "required"
    """``none`` turns authentication off (logged as a warning at start)."""
    tokens: bool = True
    """Accept personal access tokens kept in the store (``Authorization: Bearer``)."""
    token_cache_seconds: float = 10.0
    """How long a verified token is trusted without a store round trip."""
    custom_header: str | None = None
    """Harbor's CUSTOM auth mode: the header (``X-Api-Key``) whose value is a personal access token."""
    basic: bool = True
    """Harbor's BASIC auth mode: ``Authorization: Basic`` is accepted when the part after its
    first ``:`` is a personal access token (Harbor sends ``username:U`` or ``password:P`` at
    random, so the token goes in both of Harbor's fields). The name part is never proof."""
    jwt: JWTConfig | None = None
    """Harbor's OAUTH mode with JWTs from an identity provider (besides personal access tokens)."""

    def __post_init__(self) -> None:
        if self.custom_header is not None:
            if not _HEADER_NAME.fullmatch(self.custom_header):
                raise ValueError(f"custom_header: {self.custom_header!r} is not an HTTP header name")
            if self.custom_header.lower() in _RESERVED_HEADERS:
                raise ValueError(
                    f"custom_header: {self.custom_header!r} is reserved; pick your own name such as X-Api-Key "
                    "(for 'Authorization: Bearer <token>' use Harbor's OAUTH mode, which needs no custom_header)"
                )
            if not self.tokens:
                raise ValueError("custom_header: its value is a personal access token, so it needs tokens: true")
        if self.mode == "required" and not self.tokens and self.jwt is None:
            raise ValueError(
                "tokens: with tokens: false and no jwt section nothing can authenticate; "
                "to turn authentication off say mode: none explicitly"
            )


class RegistryCredential(_Section):
    host: str
    username: str
    password_env: str | None = None
    password_file: str | None = None

    def __post_init__(self) -> None:
        if bool(self.password_env) == bool(self.password_file):
            raise ValueError("password_env: give exactly one of password_env or password_file")
        if self.password_env and not os.environ.get(self.password_env):
            raise ValueError(f"password_env: environment variable {self.password_env} is not set")
        if self.password_file and not Path(self.password_file).is_file():
            raise ValueError(f"password_file: {self.password_file} does not exist")

    def credentials(self) -> Credentials:
        if self.password_env:
            return Credentials(self.username, os.environ[self.password_env])
        return Credentials(self.username, Path(self.password_file or "").read_text().strip())


class RegistryTLS(_Section):
    """How the gateway verifies one registry's (or file server's) TLS, for every job that sets none of its own."""

    host: str
    """``harbor.internal`` (port 443) or ``harbor.internal:8443``: the authority this entry is for."""
    ca_file: str | None = None
    """PEM file of the CA (or CAs) that signed the host's certificate, trusted for that host instead of the default
    CAs; read and checked at start."""
    insecure_skip_verify: bool = False
    """Do not verify the host's certificate at all (a test registry); its traffic can then be read and changed
    by anyone in between, credentials included."""

    def __post_init__(self) -> None:
        try:
            tls_authority(self.host)
        except ValueError as error:
            raise ValueError(f"host: {error}") from None
        if self.ca_file is None and not self.insecure_skip_verify:
            raise ValueError(
                "ca_file: give ca_file (the CA that signed the host's certificate) or insecure_skip_verify: true"
            )
        if self.ca_file is not None and self.insecure_skip_verify:
            raise ValueError("insecure_skip_verify: it makes ca_file pointless: give one of them")
        self._chain()

    def _chain(self) -> tuple[str, ...]:
        if self.ca_file is None:
            return ()
        try:
            return (read_ca_file(Path(self.ca_file).expanduser()),)
        except ValueError as error:
            raise ValueError(f"ca_file: {error}") from None

    def context(self) -> ssl.SSLContext:
        """The client context for this host (the CA file is read again: it was checked at load)."""
        return ssl_context(OriginTLS(certificate_chain=self._chain(), insecure_skip_verify=self.insecure_skip_verify))


class RegistriesConfig(_Section):
    allow: list[str] = []
    """Hosts the gateway may fetch from: ``host``, ``host:port``, ``*.suffix``, CIDR, or ``*``."""
    credentials: list[RegistryCredential] = []
    """Used when the caller sent none (Kraken events, the CLI) or its token was refused. Never for a job that sets
    its own ``certificate_chain`` or ``insecure_skip_verify``: a caller's TLS choice could lead them to a man in
    the middle."""
    tls: list[RegistryTLS] = []
    """TLS to registries and file servers behind a private CA (``{host, ca_file}``) or unverified
    (``{host, insecure_skip_verify: true}``), for Kraken events, the CLI and every job that sends no
    ``certificate_chain``/``insecure_skip_verify`` of its own (those win for their job). Hosts not listed are
    verified against the default CAs (``SSL_CERT_FILE``, else the certifi bundle)."""
    max_manifest_bytes: int = MAX_MANIFEST_BYTES
    """Largest manifest or index read from a registry, counted after decompression (4 MiB); larger ones are refused."""
    max_blob_bytes: int = MAX_BLOB_BYTES
    """Largest size a manifest may declare for a blob (64 GiB); a larger declaration fails the job at resolve time."""
    max_error_body_bytes: int = MAX_ERROR_BODY_BYTES
    """Most of a registry's or token service's error answer read (64 KiB, decompressed): only a short detail is quoted."""
    max_token_bytes: int = MAX_TOKEN_BYTES
    """Largest token service answer read, counted after decompression (64 KiB); a larger one is refused."""
    manifest_cache_bytes: int = MANIFEST_CACHE_BYTES
    """Bytes of by-digest manifests kept in memory (32 MiB), counted by their size, least recently used dropped first."""
    read_timeout_seconds: float = 30.0
    """Longest wait for the next bytes from a registry, token service or cache; a response's head must arrive within
    twice this plus the 10 s connect timeout, however slowly it is dripped."""
    body_timeout_seconds: float = BODY_SECONDS
    """Longest a whole manifest, index or token answer may take to arrive (60 s); blobs are held to
    ``runner.min_transfer_bytes_per_second`` instead."""

    def __post_init__(self) -> None:
        for index, pattern in enumerate(self.allow):
            if not pattern or " " in pattern or ("/" in pattern and not re.match(r"^[0-9a-fA-F.:]+/\d+$", pattern)):
                raise ValueError(f"allow[{index}]: {pattern!r} is not a host, host:port, *.suffix, CIDR or *")
        for key in ("max_manifest_bytes", "max_blob_bytes", "max_error_body_bytes", "max_token_bytes"):
            if getattr(self, key) < 1024:
                raise ValueError(f"{key}: must be at least 1024")
        if self.manifest_cache_bytes < 0:
            raise ValueError("manifest_cache_bytes: cannot be negative (0 keeps no manifest)")
        for key in ("read_timeout_seconds", "body_timeout_seconds"):
            if not 0 < getattr(self, key) <= 3600:
                raise ValueError(f"{key}: must be more than 0 and at most 3600 seconds")
        seen: dict[tuple[str, int], int] = {}
        for index, entry in enumerate(self.tls):
            authority = tls_authority(entry.host)
            if authority in seen:
                raise ValueError(f"tls[{index}].host: {entry.host} is already configured by tls[{seen[authority]}]")
            seen[authority] = index

    def policy(self) -> URLPolicy:
        return URLPolicy(tuple(self.allow))

    def tls_contexts(self) -> dict[str, ssl.SSLContext]:
        """``registries.tls`` as the origin client takes it: ``host[:port]`` to its context, built at load."""
        return {entry.host: entry.context() for entry in self.tls}

    def limits(self) -> ReadLimits:
        """The caps the registry client reads within."""
        return ReadLimits(
            manifest_bytes=self.max_manifest_bytes,
            error_body_bytes=self.max_error_body_bytes,
            token_bytes=self.max_token_bytes,
            blob_bytes=self.max_blob_bytes,
            manifest_cache_bytes=self.manifest_cache_bytes,
            body_seconds=self.body_timeout_seconds,
        )


class RunnerConfig(_Section):
    workers: int = 32
    """Cluster tasks run at once by this replica. Tasks that wait on an upstream (``dragonfly``) need many;
    on a small machine serving only ``local``/``mirror`` clusters, 8 keeps the API more responsive."""
    lease_seconds: float = 30.0
    """A claimed task is reclaimed by another replica this long after its last heartbeat."""
    default_timeout: str = "30m"
    """A job's time limit when the request gives none (Harbor waits 30 minutes)."""
    dedupe_window_seconds: float = 600.0
    """A blob warmed on an endpoint is not fetched there again within this window."""
    min_transfer_bytes_per_second: int = 16384
    """The slowest a blob or file may arrive, averaged over ``min_transfer_window_seconds`` once
    ``min_transfer_grace_seconds`` have passed; a slower one (a registry that drips) fails its row with
    a message naming the rate, freeing its fetch slot. 0 turns the floor off."""
    min_transfer_window_seconds: float = 30.0
    """The window ``min_transfer_bytes_per_second`` is averaged over."""
    min_transfer_grace_seconds: float = 30.0
    """How long a transfer may start slowly (a cold cache fetching upstream) before the floor applies."""
    poll_seconds: float = 1.0
    """How often an idle replica looks for work another replica queued."""
    max_timeout: str = "24h"
    """The longest time limit a request may ask for (``args.timeout``); a longer one is refused with 422."""
    max_result_bytes: int = 1 << 20
    """Bytes of result rows one cluster task stores; rows beyond it are counted, not stored."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers: must be at least 1")
        if self.lease_seconds < 3:
            raise ValueError("lease_seconds: must be at least 3")
        if self.min_transfer_bytes_per_second < 0:
            raise ValueError("min_transfer_bytes_per_second: must not be negative (0 turns the floor off)")
        if self.min_transfer_window_seconds <= 0:
            raise ValueError("min_transfer_window_seconds: must be positive")
        if self.min_transfer_grace_seconds < 0:
            raise ValueError("min_transfer_grace_seconds: must not be negative")
        parse_duration(self.default_timeout)
        if parse_duration(self.max_timeout) <= 0:
            raise ValueError("max_timeout: must be longer than 0s")
        if parse_duration(self.default_timeout) > parse_duration(self.max_timeout):
            raise ValueError(f"default_timeout: {self.default_timeout} is longer than max_timeout ({self.max_timeout})")
        if self.max_result_bytes < 1024:
            raise ValueError("max_result_bytes: must be at least 1024")

    @property
    def max_timeout_seconds(self) -> float:
        return parse_duration(self.max_timeout)

    @property
    def default_timeout_seconds(self) -> float:
        return parse_duration(self.default_timeout)

    @property
    def transfer_floor(self) -> TransferFloor:
        """The minimum transfer rate every fetch is held to (:mod:`adapters.ratefloor`)."""
        return TransferFloor(
            self.min_transfer_bytes_per_second, self.min_transfer_window_seconds, self.min_transfer_grace_seconds
        )


class ClusterConfig(_Section):
    id: int
    name: str
    adapter: str
    platform: str | None = None
    """This cluster's nodes' platform (``linux/arm64``), used when a request names none."""
    success: Literal["any", "all"] = "any"
    """When this cluster's task succeeds: ``any``, every blob reached at least one endpoint (failed copies are
    listed as rows of a SUCCESS); ``all``, every endpoint got every blob (one failed row fails the task)."""

    def __post_init__(self) -> None:
        if self.id < 1:
            raise ValueError("id: must be a positive integer")
        if not self.name:
            raise ValueError("name: must not be empty")
        if self.platform and self.platform != "all":
            parse_platform(self.platform)


class Cluster(msgspec.Struct, frozen=True):
    """A cluster as the gateway uses it: common keys plus the adapter's decoded options."""

    config: ClusterConfig
    options: Any
    config_path: str

    @property
    def id(self) -> int:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name


class Config(msgspec.Struct, kw_only=True):
    server: ServerConfig
    store: StoreConfig
    auth: AuthConfig
    registries: RegistriesConfig
    runner: RunnerConfig
    clusters: list[Cluster]
    source: str = "<embedded default>"

    @property
    def state_dir(self) -> Path:
        return Path(self.server.state_dir) if self.server.state_dir else default_state_dir()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_dir / 'gateway.db'}"

    def credentials_for(self, host: str) -> Credentials | None:
        for entry in self.registries.credentials:
            if entry.host.lower() == host.lower():
                return entry.credentials()
        return None


_SECTIONS: dict[str, type[_Section]] = {
    "server": ServerConfig,
    "store": StoreConfig,
    "auth": AuthConfig,
    "registries": RegistriesConfig,
    "runner": RunnerConfig,
}


def _describe(error: msgspec.ValidationError, prefix: str, struct: type[Any]) -> str:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.id``` into ``clusters[2].id: expected int, got str``,
    and name the allowed values when a value is not one of them."""
    text = str(error)
    message, _, where = text.rpartition(" - at `")
    if not message:
        message, where = text, "$`"
    where = where.rstrip("`")
    if choices := _choices(struct, where):
        message += f" (allowed: {', '.join(map(str, choices))})"
    path = prefix + where[1:]
    if match := re.match(r"Object contains unknown field `(.+)`", message):
        path, message = f"{path}.{match[1]}", "unknown key"
    elif match := re.match(r"Object missing required field `(.+)`", message):
        path, message = f"{path}.{match[1]}", "required key is missing"
    elif match := re.match(r"^([\w\[\]\.]+): (.*)$", message, re.S):
        path, message = f"{path}.{match[1]}", match[2]
    else:
        message = message.replace("`", "")
        message = message[0].lower() + message[1:] if message else message
    return f"{path.lstrip('.')}: {message}"


def _choices(struct: type[Any], where: str) -> tuple[Any, ...]:
    """The values the ``Literal`` at msgspec's error path (``$.endpoints[0].verify``) allows; () if none."""
    info: Any = msgspec.inspect.type_info(struct)
    for field in re.findall(r"\.(\w+)|\[\d+\]", where):  # "" for a list index
        info = _without_none(info)
        if field:
            fields = {f.encode_name: f.type for f in getattr(info, "fields", ())}
            if field not in fields:
                return ()
            info = fields[field]
        elif hasattr(info, "item_type"):
            info = info.item_type
        else:
            return ()
    info = _without_none(info)
    return info.values if isinstance(info, msgspec.inspect.LiteralType) else ()


def _without_none(info: Any) -> Any:
    """``X | None`` as ``X`` (the type a value that is present must have)."""
    if isinstance(info, msgspec.inspect.UnionType):
        rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return info


def _convert_reporting_all(raw: Any, struct: type[Any], where: str, errors: list[str]) -> Any:
    """Decode ``raw``; msgspec stops at the first problem, so drop each unknown key and go on."""
    raw = dict(raw) if isinstance(raw, dict) else raw
    for _ in range(20):
        try:
            return msgspec.convert(raw, struct)
        except msgspec.ValidationError as error:
            errors.append(_describe(error, where, struct))
            unknown = re.match(r"Object contains unknown field `([^`]+)`(?: - at `\$`)?$", str(error))
            if not unknown or not isinstance(raw, dict):
                return None
            raw.pop(unknown[1], None)
    return None


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file (``None``: the embedded default). Raises :class:`ConfigError`."""
    if path is None:
        return build_config({}, source="<embedded default>")
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read ({error.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML ({error})"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return build_config(data, source=str(path))


def build_config(data: dict[str, Any], *, source: str) -> Config:
    errors: list[str] = []
    sections: dict[str, Any] = {}
    for key in data:
        if key not in _SECTIONS and key != "clusters":
            errors.append(f"{key}: unknown key (sections are {', '.join([*_SECTIONS, 'clusters'])})")
    for key, struct in _SECTIONS.items():
        section = _convert_reporting_all(data.get(key) or {}, struct, key, errors)
        if section is not None:
            sections[key] = section
    state_dir = (
        sections["server"].state_dir
        if "server" in sections and sections["server"].state_dir
        else str(default_state_dir())
    )
    raw_clusters = data.get("clusters")
    if raw_clusters is None:
        raw_clusters = [{"id": 1, "name": "local", "adapter": "local", "path": str(Path(state_dir) / "cache")}]
    clusters = _build_clusters(raw_clusters, errors)
    if errors:
        raise ConfigError(errors)
    return Config(clusters=clusters, source=source, **sections)


def _build_clusters(raw_clusters: Any, errors: list[str]) -> list[Cluster]:
    if not isinstance(raw_clusters, list) or not raw_clusters:
        errors.append("clusters: must be a non-empty list")
        return []
    clusters: list[Cluster] = []
    seen_ids: dict[int, str] = {}
    seen_names: dict[str, str] = {}
    common = set(ClusterConfig.__struct_fields__)
    for index, raw in enumerate(raw_clusters):
        where = f"clusters[{index}]"
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a mapping with id, name and adapter")
            continue
        try:
            config = msgspec.convert({k: v for k, v in raw.items() if k in common}, ClusterConfig)
        except msgspec.ValidationError as error:
            errors.append(_describe(error, where, ClusterConfig))
            continue
        if config.id in seen_ids:
            errors.append(f"{where}.id: {config.id} is already used by {seen_ids[config.id]}")
        if config.name in seen_names:
            errors.append(f"{where}.name: {config.name!r} is already used by {seen_names[config.name]}")
        seen_ids[config.id], seen_names[config.name] = where, where
        try:
            adapter = adapter_registry.load(config.adapter)
        except adapter_registry.UnknownAdapter as error:
            errors.append(f"{where}.adapter: {error}")
            continue
        options = _convert_reporting_all(
            {k: v for k, v in raw.items() if k not in common}, adapter.Options, where, errors
        )
        if options is None:
            continue
        clusters.append(Cluster(config=config, options=options, config_path=where))
    return clusters
