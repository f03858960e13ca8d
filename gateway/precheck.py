"""The create-time manifest check: answer in the create call what can already be known there.

Harbor 2.1-2.11 never show a job's failure text (their task log ends "is fail with error: "); the
only answers they log are HTTP errors of a call, ``POST ".../preheats" error: 404 Not Found {body}``.
So before a legacy job is committed, the gateway reads the image's manifest once through the
client, auth order (the caller's header, then configured credentials), TLS (the job's own
``certificate_chain``/``insecure_skip_verify``, else ``registries.tls``) and URL policy the adapters
use, for at most :data:`CREATE_CHECK_SECONDS`. A job with its own TLS is, as when it runs, never
handed the configured credentials. A definite answer becomes the create's answer; an
undecided one (a slow or unreachable registry, a 5xx, a rate limit) is accepted and runs as before.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from adapters.base import Credentials
from adapters.oci import OciClient, RegistryAuth
from adapters.origintls import job_context, overrides
from adapters.reference import parse_manifest_url
from adapters.retry import RegistryError
from gateway.config import Config
from gateway.jobs import JobSpec

CREATE_CHECK_SECONDS = 3.0
"""How long a create waits for the registry's answer before it accepts the job undecided."""
log = logging.getLogger("gateway.precheck")


class ManifestRefused(Exception):
    """The registry answered definitely: the job would fail. ``status`` is the create's HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _status_for(error: RegistryError) -> int:
    """404 for a missing repository or tag, 403 for a refused token or account (the caller's gateway credential
    was fine: 401 would say otherwise), 422 for any other answer that will not change on a retry."""
    if error.status == 404:
        return 404
    if error.status in (401, 403):
        return 403
    return 422


async def check_manifest(oci: OciClient, config: Config, spec: JobSpec, seconds: float = CREATE_CHECK_SECONDS) -> None:
    """Raise :class:`ManifestRefused` when the image's manifest definitely cannot be read; return otherwise."""
    if spec.type != "image" or not spec.urls:
        return
    url = spec.urls[0]
    try:
        ref = parse_manifest_url(url)
    except ValueError:
        return  # validation already refused it; nothing to decide here
    try:
        tls = spec.origin_tls()  # as the runner hands it to the adapters
    except ValueError:
        return  # validation already refused it
    credentials = Credentials(spec.username, spec.password) if spec.username and spec.password else None
    if credentials is None and not overrides(tls):  # the operator's credentials only over the operator's TLS
        credentials = config.credentials_for(urlsplit(url).netloc)
    auth = RegistryAuth(header=spec.headers.get("Authorization"), credentials=credentials, ssl=job_context(tls))
    try:
        async with asyncio.timeout(seconds):
            await oci.get_manifest(ref, auth)
    except TimeoutError:
        log.debug("the manifest of %s did not answer within %.0fs at create; accepted undecided", ref.name, seconds)
    except RegistryError as error:
        if error.transient:
            return
        raise ManifestRefused(_status_for(error), f"preheat refused, no job was created: {error}") from None
    except Exception:  # a bug here must never turn a create into a 500: the job decides as before
        log.exception("the create-time manifest check of %s failed unexpectedly; accepted undecided", ref.name)
