"""Transport errors in words a person recognises and can act on, for rows, errors and health."""

from __future__ import annotations

import socket

import httpx

from adapters.bounded import quote
from adapters.transport import CertificateRejected
from adapters.urlpolicy import origin


def describe(error: Exception) -> str:
    """A transport error in a few words a person recognises (``connection refused``, ``timed out``)."""
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    if isinstance(error, CertificateRejected):
        return f"its TLS certificate failed verification ({error.reason})"
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(cause):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"name does not resolve ({cause.strerror})"
        cause = cause.__cause__ or cause.__context__
    text = str(error) or type(error).__name__
    if text == "All connection attempts failed":
        return "connection refused or host unreachable"
    return quote(text)


def certificate_advice(error: CertificateRejected, job_origin: str) -> str:
    """What failed and what to do: the job's own TLS settings apply to ``job_origin`` (its registry or
    file server, ``""`` for none), ``registries.tls`` to any host."""
    url = error.request.url
    netloc = f"{url.host}:{url.port}" if url.port else url.host
    if job_origin and origin(str(url)) == job_origin:
        fix = (
            "if it is signed by a private CA, send that CA's certificate in the job's certificate_chain "
            f"(or configure it for {netloc} in registries.tls); insecure_skip_verify skips the check"
        )
    else:
        fix = f"if it is signed by a private CA, configure that CA for {netloc} in registries.tls"
    return f"the TLS certificate of {netloc} failed verification ({error.reason}): {fix}"
