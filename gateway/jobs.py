"""The job model every dialect shares, its validation, and the job service.

A dialect turns its request into a :class:`JobSpec`; the service validates it (every problem
a 422 with a message a person can act on, before any job exists), seals its secrets,
commits the job with one task per target cluster, and wakes the runner. The work runs in the
background, so creating a job takes milliseconds whatever the registry is doing.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import msgspec

from adapters import registry as adapter_registry
from adapters.base import DEFAULT_SCOPE, OPTIONAL_ARGUMENTS, SCOPES, OriginTLS
from adapters.files import filter_url
from adapters.origintls import parse_certificate_chain
from adapters.reference import parse_manifest_url, parse_platform
from adapters.urlpolicy import RefusedURL, URLPolicy, split_http_url
from gateway.config import Cluster, Config
from gateway.redact import has_userinfo, public_url
from gateway.secretbox import SecretBox
from gateway.store import JobRecord, NewJob, SqlStore

MAX_HEADERS = 32
MAX_HEADER_BYTES = 16 << 10
MAX_INT64 = 2**63 - 1
MAX_CONCURRENT_TASKS = 100
MAX_CONCURRENT_PEERS = 1000
MAX_COUNT = 200
MAX_IPS = 1000
_ADDRESS = re.compile(r"[0-9A-Za-z.:%_-]{1,253}")
"""An IPv4 or IPv6 address or a host name, as ``ips`` may name an endpoint."""
"""The largest integer Go (Harbor, Dragonfly) decodes into an int64: anything beyond is no sensible value."""
USERINFO_REFUSED = "user-info in URLs is not accepted: send credentials as headers or configure registries.credentials"
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
"""An HTTP header name (RFC 9110 token)."""
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
"""An HTTP header value the gateway forwards: visible ASCII, spaces and tabs; no CR, LF or other control."""
_DIGEST = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[+._-][a-z0-9]+)*):(?P<encoded>[a-zA-Z0-9=_-]{1,256})")
"""An OCI content digest (image-spec descriptor grammar); matched whole (``fullmatch``), never with ``$``."""
_DIGEST_HEX = {"sha256": 64, "sha512": 128}
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f]")
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidRequest(Exception):
    """A request the gateway will not accept; the message says what and how to fix it (422)."""


class JobSpec(msgspec.Struct, kw_only=True):
    """A preheat as every dialect describes it."""

    type: Literal["image", "file"]
    urls: list[str]
    tag: str = ""
    application: str = ""
    filtered_query_params: list[str] = []
    platform: str = ""
    scope: str = ""
    headers: dict[str, str] = {}
    """Secret: sealed at rest, never echoed."""
    username: str = ""
    password: str = ""
    """Secret: sealed at rest, never echoed."""
    piece_length: int | None = None
    concurrent_count: int = 0
    """Blobs in flight per endpoint (Dragonfly's ``concurrent_task_count``); 0: the default."""
    concurrent_peer_count: int = 0
    """Endpoints warmed at once; 0: the default."""
    ips: list[str] = []
    count: int | None = None
    percentage: int | None = None
    """``ips``, ``count``, ``percentage``: which endpoints an ``all_*`` scope warms (at most one is given)."""
    certificate_chain: list[str] = []
    """PEM certificates this job trusts for its origin's TLS."""
    insecure_skip_verify: bool = False
    timeout_seconds: float = 0.0
    cluster_ids: list[int] | None = None
    bio: str = ""
    source: str = "openapi"
    extra: dict[str, Any] = {}
    """Arguments the gateway does not interpret, kept for adapters that forward upstream."""

    def origin_tls(self) -> OriginTLS | None:
        """The job's own TLS to its origin, or ``None`` for the gateway's (``registries.tls``, the system's CAs)."""
        if not self.certificate_chain and not self.insecure_skip_verify:
            return None
        chain = parse_certificate_chain(self.certificate_chain) if self.certificate_chain else ()
        return OriginTLS(certificate_chain=chain, insecure_skip_verify=self.insecure_skip_verify)

    def public_urls(self) -> list[str]:
        """The URLs without user-info or signing parameters (image and file alike): a signed URL is a credential.

        A file's URL is also kept in its identity form (:func:`adapters.files.filter_url`), as Dragonfly shows it.
        """
        public = [public_url(url, self.filtered_query_params) for url in self.urls]
        if self.type == "file":
            return [filter_url(url, self.filtered_query_params) for url in public]
        return public

    def public(self) -> dict[str, Any]:
        """The spec with every secret blanked: what the store keeps in the clear and what is echoed."""
        return msgspec.to_builtins(msgspec.structs.replace(self, headers={}, password="", urls=self.public_urls()))

    def secrets(self) -> dict[str, Any]:
        """What :meth:`public` leaves out and a worker needs: sealed at rest, purged when the job ends."""
        urls = self.urls if self.public_urls() != self.urls else []
        return {"headers": self.headers, "password": self.password, "urls": urls}


def check_dragonfly_arguments(spec: JobSpec) -> None:
    """Dragonfly's own bounds on its preheat arguments, each a 422 naming them."""
    for name, value, low, high, default in (
        ("concurrent_task_count", spec.concurrent_count, 1, MAX_CONCURRENT_TASKS, "8"),
        ("concurrent_peer_count", spec.concurrent_peer_count, 1, MAX_CONCURRENT_PEERS, "500"),
    ):
        if value != 0 and not low <= value <= high:
            raise InvalidRequest(f"{name} must be between {low} and {high} (0 or absent: {default})")
    for name, given, high in (("count", spec.count, MAX_COUNT), ("percentage", spec.percentage, 100)):
        if given is not None and not 1 <= given <= high:
            raise InvalidRequest(f"{name} must be between 1 and {high}")
    chosen = [name for name in ("ips", "count", "percentage") if getattr(spec, name) not in (None, [])]
    if len(chosen) > 1:
        raise InvalidRequest(f"{' and '.join(chosen)} each choose endpoints: send one of them")
    if chosen and spec.scope in ("", DEFAULT_SCOPE):
        raise InvalidRequest(
            f"{chosen[0]} chooses which endpoints to warm, for scope all_seed_peers or all_peers; "
            f"scope {spec.scope or 'single_seed_peer (the default)'} warms each blob on one endpoint"
        )
    if len(spec.ips) > MAX_IPS:
        raise InvalidRequest(f"ips has {len(spec.ips)} addresses: at most {MAX_IPS}")
    for ip in spec.ips:
        if not _ADDRESS.fullmatch(ip):
            raise InvalidRequest(f"ips: {public_text(ip, 80)!r} is not an IP address or host name")
    if spec.certificate_chain:
        if spec.insecure_skip_verify:
            raise InvalidRequest("certificate_chain and insecure_skip_verify contradict each other: send one")
        try:
            parse_certificate_chain(spec.certificate_chain)
        except ValueError as error:
            raise InvalidRequest(str(error)) from None


def parse_filtered_query_params(text: str) -> list[str]:
    return [name for name in (part.strip() for part in text.split("&")) if name]


def check_digest(value: str, where: str) -> None:
    """Raise :class:`InvalidRequest` unless ``value`` is a whole OCI digest (a trailing newline is not one)."""
    match = _DIGEST.fullmatch(value)
    length = _DIGEST_HEX.get(match["algorithm"]) if match else None
    if not match or (length is not None and not re.fullmatch(f"[a-f0-9]{{{length}}}", match["encoded"])):
        raise InvalidRequest(
            f"{where} {public_text(value, 80)!r} is not a digest: expected sha256: and 64 lower-case hex digits"
        )


def check_header(name: str, value: str) -> None:
    """Raise :class:`InvalidRequest` naming a header that cannot be sent as given (CR/LF injection, controls, non-ASCII)."""
    if not _HEADER_NAME.fullmatch(name):
        shown = public_text(name, 64)
        raise InvalidRequest(
            f"header name {shown!r} is not a valid HTTP header name: use letters, digits and !#$%&'*+.^_`|~- only"
        )
    if not _HEADER_VALUE.fullmatch(value):
        bad = next(ch for ch in value if not _HEADER_VALUE.fullmatch(ch))
        raise InvalidRequest(
            f"header {name}: its value contains {_describe_char(bad)}; header values must be visible ASCII "
            "on one line (no CR, LF or other control characters)"
        )


def public_text(text: str, limit: int) -> str:
    """A caller's text fit to quote back: control characters escaped, at most ``limit`` characters."""
    return text[:limit].encode("unicode_escape").decode("ascii")


def _describe_char(char: str) -> str:
    names = {
        "\r": "a carriage return (CR)",
        "\n": "a line feed (LF)",
        "\t": "a tab",
        " ": "a space",
        "\x00": "a NUL byte",
    }
    return names.get(char, f"the character U+{ord(char):04X}")


def _without_secrets(message: str, url: str, filtered: list[str]) -> str:
    """A validation message that quotes ``url`` (whole or its first 200 characters), with the public form quoted instead."""
    public = public_url(url, filtered)
    return message.replace(url, public).replace(url[:200], public[:200])


class JobService:
    """Creates, reads, lists and removes jobs; shared by every dialect and the console."""

    def __init__(
        self,
        config: Config,
        store: SqlStore,
        box: SecretBox,
        *,
        on_created: Callable[[JobRecord], None] = lambda _job: None,
        on_deleted: Callable[[int], None] = lambda _job_id: None,
    ) -> None:
        self.config = config
        self.store = store
        self.box = box
        self.policy: URLPolicy = config.registries.policy()
        self.clusters: Mapping[int, Cluster] = {cluster.id: cluster for cluster in config.clusters}
        self.adapter_types = {cluster.id: adapter_registry.load(cluster.config.adapter) for cluster in config.clusters}
        """Each cluster's adapter class: what it ``supports`` and ``understands``, looked up once."""
        self.max_timeout_seconds = config.runner.max_timeout_seconds
        self.default_timeout_seconds = config.runner.default_timeout_seconds
        self.on_created = on_created
        self.on_deleted = on_deleted

    async def validate(self, spec: JobSpec) -> None:
        """Raise :class:`InvalidRequest` for anything the gateway cannot do."""
        if spec.type == "image" and len(spec.urls) != 1:
            raise InvalidRequest("an image preheat takes exactly one url: the image's manifest URL")
        if not spec.urls:
            raise InvalidRequest("a file preheat needs url (or urls): the files' http(s) URLs")
        if len(spec.urls) > self.config.server.max_urls:
            raise InvalidRequest(
                f"too many urls ({len(spec.urls)}): at most {self.config.server.max_urls} per job (server.max_urls)"
            )
        for url in spec.urls:
            if len(url) > 8192:
                raise InvalidRequest("a url is longer than 8192 characters")
            if bad := _URL_FORBIDDEN.search(url):
                raise InvalidRequest(
                    f"a url contains {_describe_char(bad.group())} at position {bad.start()}: "
                    "remove it or percent-encode it (URLs cannot hold spaces or control characters)"
                )
            if has_userinfo(url):
                raise InvalidRequest(USERINFO_REFUSED)
            try:
                split_http_url(url)
                if spec.type == "image":
                    parse_manifest_url(url)
                await self.policy.check(url)
            except (RefusedURL, ValueError) as error:
                raise InvalidRequest(_without_secrets(str(error), url, spec.filtered_query_params)) from None
        if spec.scope and spec.scope not in SCOPES:
            raise InvalidRequest(f"scope {spec.scope!r} is not one of {', '.join(SCOPES)}")
        if spec.platform and spec.platform != "all":
            try:
                parse_platform(spec.platform)
            except ValueError as error:
                raise InvalidRequest(str(error)) from None
        if spec.cluster_ids:
            unknown = sorted({i for i in spec.cluster_ids if i not in self.clusters})
            if unknown:
                known = ", ".join(f"{c.id} ({c.name})" for c in self.clusters.values())
                raise InvalidRequest(
                    f"unknown cluster id {', '.join(map(str, unknown))}: this gateway has clusters {known}; "
                    "see GET /oapi/v1/clusters"
                )
        if spec.timeout_seconds < 0:
            raise InvalidRequest("timeout cannot be negative (it is a Go duration in nanoseconds; 0 means the default)")
        self._check_timeout(spec.timeout_seconds)
        if spec.piece_length is not None and not -MAX_INT64 <= spec.piece_length <= MAX_INT64:
            raise InvalidRequest(f"piece_length is out of range: at most {MAX_INT64} (a Go int64)")
        for name, text in (
            ("tag", spec.tag),
            ("application", spec.application),
            ("platform", spec.platform),
            ("scope", spec.scope),
            ("username", spec.username),
        ):
            if bad := _TEXT_FORBIDDEN.search(text):
                raise InvalidRequest(f"{name} contains {_describe_char(bad.group())}: remove it")
        check_dragonfly_arguments(spec)
        self.check_understood(spec, self.targets(spec))
        if spec.piece_length is not None and spec.piece_length < 0:
            raise InvalidRequest("piece_length cannot be negative")
        if len(spec.headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in spec.headers.items()) > MAX_HEADER_BYTES:
            raise InvalidRequest(f"headers are too large: at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes")
        for name, value in spec.headers.items():
            check_header(name, value)
        if len(spec.bio) > 1000:
            raise InvalidRequest("bio is longer than 1000 characters")

    def check_understood(self, spec: JobSpec, targets: list[int]) -> None:
        """Refuse an optional Dragonfly argument sent to a cluster whose adapter gives it no meaning."""
        given = sorted(name for name in OPTIONAL_ARGUMENTS if getattr(spec, name))
        if not given:
            return
        for cluster_id in targets:
            cluster = self.clusters[cluster_id]
            adapter = self.adapter_types[cluster_id]
            if unused := [name for name in given if name not in adapter.understands]:
                able = [
                    f"{c.id} ({c.name})"
                    for c in self.clusters.values()
                    if set(given) <= self.adapter_types[c.id].understands
                ]
                hint = f"clusters that use them: {', '.join(able)}" if able else "no cluster of this gateway uses them"
                raise InvalidRequest(
                    f"cluster {cluster.name} (id {cluster.id}, adapter {cluster.config.adapter}) gives "
                    f"{' and '.join(unused)} no meaning, so the gateway will not send it there: leave "
                    f"{'it' if len(unused) == 1 else 'them'} out, or name other clusters in scheduler_cluster_ids "
                    f"({hint}); see docs/adapters.md"
                )

    def targets(self, spec: JobSpec) -> list[int]:
        """The clusters a job runs on: those it names (an unsupporting one then fails its task,
        saying so), else every cluster whose adapter preheats its type (a file job skips mirrors);
        when none does, every cluster, so each task's error says what to configure instead."""
        if spec.cluster_ids:
            return sorted(set(spec.cluster_ids))
        supporting = [i for i in self.clusters if spec.type in self.adapter_types[i].supports]
        return sorted(supporting or self.clusters)

    def _check_timeout(self, seconds: float) -> None:
        runner = self.config.runner
        maximum = self.max_timeout_seconds
        if not math.isfinite(seconds) or seconds > maximum:
            raise InvalidRequest(
                f"timeout is longer than the maximum of {runner.max_timeout} ({int(maximum * 1e9)} nanoseconds, "
                f"runner.max_timeout): send a Go duration in nanoseconds up to that, or 0 for the default ({runner.default_timeout})"
            )

    async def create(
        self,
        spec: JobSpec,
        *,
        check: Callable[[JobSpec], Awaitable[None]] | None = None,
        event_key: str | None = None,
    ) -> JobRecord:
        """Validate and commit a job. ``check`` runs after validation, before anything is stored: a dialect's
        create-time check (:mod:`gateway.precheck`) that may refuse what would certainly fail. With ``event_key``
        (a Kraken event's), the key is recorded with the job, and :class:`gateway.store.EventHasJob` raised
        instead when the event already made one."""
        await self.validate(spec)
        if check is not None:
            await check(spec)
        now = time.time()
        timeout = spec.timeout_seconds or self.default_timeout_seconds
        targets = self.targets(spec)
        job = await self.store.create_job(
            NewJob(
                group_id=f"group_{uuid.uuid4()}",
                type="preheat",
                source=spec.source,
                args=spec.public(),
                cluster_ids=sorted(set(spec.cluster_ids)) if spec.cluster_ids else None,
                target_cluster_ids=targets,
                bio=spec.bio,
                secret=self.box.seal(spec.secrets()),
                deadline=now + timeout,
                created_at=now,
                event_key=event_key,
            )
        )
        self.on_created(job)
        return job

    async def get(self, job_id: int) -> JobRecord | None:
        return await self.store.get_job(job_id)

    async def list_jobs(self, *, limit: int, offset: int = 0, **filters: Any) -> tuple[list[JobRecord], int]:
        """Newest first, with the total that matched (filters: ``state``, ``type``, ``source``, ``cluster_id``, ``text``)."""
        return await self.store.list_jobs(limit=limit, offset=offset, **filters)

    async def set_bio(self, job_id: int, bio: str) -> bool:
        """Change a job's description; False if there is no such job."""
        if len(bio) > 1000:
            raise InvalidRequest("bio is longer than 1000 characters")
        return await self.store.set_bio(job_id, bio)

    async def jobs_of_events(self, keys: list[str]) -> dict[str, int]:
        """The jobs earlier Kraken notifications made for these event keys."""
        return await self.store.kraken_event_jobs(keys)

    async def cancel(self, job_id: int, by: str) -> bool:
        """Stop a job's unfinished work; it stays listed as FAILURE ("canceled by ..."). False if nothing ran."""
        self.on_deleted(job_id)
        return await self.store.cancel_job(job_id, f"canceled by {by}")

    async def delete(self, job_id: int) -> bool:
        """Cancel unfinished work, then remove the job."""
        self.on_deleted(job_id)
        return await self.store.delete_job(job_id)
