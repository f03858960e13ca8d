"""``kraken``: an upstream Kraken proxy serves this cluster.

A cluster task posts one registry notification to ``{endpoint}/registry/notifications``, in
the shape Harbor's own Kraken driver uses (capitalised keys, ``Action: push``, the Docker
schema-2 media type whatever the artifact is, as Harbor's ``provider/kraken.go`` sends it). Kraken then pulls the
image into its origin cluster on its own.

Honesty about SUCCESS: Kraken answers the notification at once and offers no way to follow
the work, so this adapter's SUCCESS means "Kraken accepted the notification" (a 2xx), not
"the blobs are warm". The single result row says so in its description.

The notification names the manifest by digest. Harbor knows it; a Dragonfly-style request
names a tag, so the adapter reads the manifest from the origin (with the caller's token or
``registries.credentials``) to learn its digest first.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from adapters.base import Adapter, AdapterContext, ClusterInfo, Health, PreheatError, PreheatRequest, Progress, TaskRow
from adapters.bounded import UPSTREAM_PROBE_BYTES, BodyError, body_excerpt, quote, send_capped
from adapters.describe import describe
from adapters.guard import ConnectGuard
from adapters.oci import RegistryAuth
from adapters.options import check_base_url, check_env, parse_seconds
from adapters.origintls import job_context
from adapters.reference import DIGEST_RE, DOCKER_MANIFEST, ImageRef, parse_manifest_url
from adapters.transport import new_client
from adapters.urlpolicy import host_ip


class KrakenOptions(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str
    """Base URL of the Kraken proxy, e.g. ``http://kraken-proxy:8081``."""
    auth_header: str = "Authorization"
    """Header sent with the notification when ``auth_env`` is set."""
    auth_env: str | None = None
    """Environment variable holding that header's whole value (``Bearer ...``, ``Basic ...``)."""
    insecure: bool = False
    """Skip TLS verification of an https endpoint."""
    timeout: float | str = "30s"
    """Longest wait for Kraken's answer."""

    def __post_init__(self) -> None:
        self.endpoint = check_base_url(self.endpoint, key="endpoint")
        check_env(self.auth_env, key="auth_env")
        if not self.auth_header or any(c in self.auth_header for c in " :\r\n"):
            raise ValueError(f"auth_header: {self.auth_header!r} is not a header name")
        self.timeout = parse_seconds(self.timeout, key="timeout")


class KrakenAdapter(Adapter):
    name = "kraken"
    understands = frozenset({"certificate_chain", "insecure_skip_verify"})  # its manifest read, for the digest
    unsupported_hint = (
        "Kraken preheats images only (it is told about pushed manifests): use a proxy or local cluster "
        "for files, naming it in scheduler_cluster_ids"
    )
    Options = KrakenOptions

    def __init__(self, cluster: ClusterInfo, options: KrakenOptions, context: AdapterContext) -> None:
        super().__init__(cluster, options, context)
        self.endpoint = options.endpoint
        self.http = new_client(
            verify=not options.insecure,
            timeout=httpx.Timeout(float(options.timeout)),
            trust_env=False,
            headers={"User-Agent": context.user_agent},
            guard=ConnectGuard(configured=[options.endpoint]),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def _auth(self) -> dict[str, str]:
        value = os.environ.get(self.options.auth_env, "") if self.options.auth_env else ""
        return {self.options.auth_header: value} if value else {}

    async def check(self) -> Health:
        started = time.monotonic()
        try:
            response, _ = await send_capped(
                self.http, "GET", f"{self.endpoint}/health", limit=UPSTREAM_PROBE_BYTES, headers=self._auth()
            )
        except BodyError as error:
            return Health(False, _ms(started), f"Kraken {self.endpoint}/health answered with {error}")
        except httpx.TransportError as error:
            return Health(False, _ms(started), f"cannot reach Kraken at {self.endpoint}: {describe(error)}")
        if not 200 <= response.status_code < 300:
            return Health(False, _ms(started), f"Kraken {self.endpoint}/health answered {response.status_code}")
        return Health(True, _ms(started))

    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        try:
            origin = parse_manifest_url(request.urls[0])
        except ValueError as error:
            raise PreheatError(str(error)) from None
        digest = await self._digest(origin, request)
        progress.planned(1, 0)
        body = msgspec.json.encode(notification(origin, digest))
        try:
            response, answer = await send_capped(
                self.http,
                "POST",
                f"{self.endpoint}/registry/notifications",
                limit=UPSTREAM_PROBE_BYTES,
                content=body,
                headers={**self._auth(), "Content-Type": "application/json"},
            )
        except BodyError as error:
            raise PreheatError(f"Kraken at {self.endpoint} answered the notification with {error}") from None
        except httpx.TransportError as error:
            raise PreheatError(
                f"cannot reach Kraken at {self.endpoint}: {describe(error)}; check that its proxy is running and "
                f"that {self.cluster.config_path}.endpoint is its address"
            ) from None
        if response.status_code in (401, 403):
            fix = (
                f"set {self.options.auth_env}" if self.options.auth_env else f"set {self.cluster.config_path}.auth_env"
            )
            raise PreheatError(
                f"Kraken at {self.endpoint} refused the notification ({response.status_code}): {fix} to the value of the "
                f"{self.options.auth_header} header it expects"
            )
        if not 200 <= response.status_code < 300:
            raise PreheatError(
                f"Kraken at {self.endpoint} did not accept the notification for {origin.name} "
                f"({response.status_code}: {body_excerpt(answer) or quote(response.reason_phrase)})"
            )
        progress.succeeded(
            TaskRow(
                url=origin.manifest_url(),
                hostname=urlsplit(self.endpoint).netloc,
                ip=await host_ip(self.endpoint),
                description="accepted by Kraken, which reports no progress: SUCCESS means Kraken accepted the preheat",
            )
        )

    async def _digest(self, origin: ImageRef, request: PreheatRequest) -> str:
        """The manifest's digest: given in the URL, or read from the origin."""
        if DIGEST_RE.match(origin.reference):
            return origin.reference
        auth = RegistryAuth(
            header=request.headers.get("Authorization"),
            credentials=request.credentials,
            ssl=job_context(request.origin_tls),
        )
        try:
            manifest = await self.context.oci.get_manifest(origin, auth)
        except PreheatError as error:
            raise PreheatError(
                f"Kraken's notification needs the manifest's digest, and reading it failed: {error}"
            ) from None
        return manifest.digest


def notification(origin: ImageRef, digest: str) -> dict[str, Any]:
    """The body Harbor's Kraken driver posts (``provider/kraken.go``): keys capitalised, ``Id``/``Url`` exactly."""
    tag = "" if DIGEST_RE.match(origin.reference) else origin.reference
    return {
        "Events": [
            {
                "Id": str(uuid.uuid4()),
                "TimeStamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Action": "push",
                "Target": {
                    "MediaType": DOCKER_MANIFEST,
                    "Digest": digest,
                    "Repository": origin.repository,
                    "Url": origin.manifest_url(),
                    "Tag": tag,
                },
                "Request": None,
                "Actor": None,
            }
        ]
    }


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
