"""A job's own TLS to its origin: Dragonfly's ``certificate_chain`` and ``insecure_skip_verify``.

An origin Harbor behind a private CA is common. Dragonfly sends the CA's certificates as a JSON
array of Go ``[]byte``, so each element arrives base64 encoded (of PEM or DER); a person with
curl sends PEM text. Both are accepted, checked at create time and kept as PEM.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ssl
from pathlib import Path

from adapters.base import OriginTLS

MAX_CERTIFICATES = 16
MAX_CHAIN_BYTES = 64 << 10
"""Most certificate text a job may carry, all certificates together."""
MAX_CA_FILE_BYTES = 1 << 20
"""Largest CA file ``registries.tls`` reads (a bundle of many certificates included)."""
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


def parse_certificate_chain(items: list[str]) -> tuple[str, ...]:
    """The certificates as PEM; :class:`ValueError` says which element is not a certificate and why."""
    if len(items) > MAX_CERTIFICATES:
        raise ValueError(f"certificate_chain has {len(items)} certificates: at most {MAX_CERTIFICATES}")
    if sum(len(item) for item in items) > MAX_CHAIN_BYTES:
        raise ValueError(f"certificate_chain is larger than {MAX_CHAIN_BYTES // 1024} KiB")
    pems = tuple(_as_pem(item, index) for index, item in enumerate(items))
    for index, pem in enumerate(pems):
        try:
            ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(f"certificate_chain[{index}] is not a certificate ({error.__class__.__name__})") from None
    return pems


def _as_pem(item: str, index: int) -> str:
    text = item.strip()
    if text.startswith(_PEM_BEGIN):
        return text
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"certificate_chain[{index}] is neither PEM text nor base64: send each CA certificate as PEM "
            "(-----BEGIN CERTIFICATE-----) or as base64 of its PEM or DER bytes"
        ) from None
    if raw.lstrip().startswith(_PEM_BEGIN.encode()):
        return raw.decode("ascii", "replace").strip()
    return ssl.DER_cert_to_PEM_cert(raw).strip()


def ssl_context(tls: OriginTLS) -> ssl.SSLContext:
    """The client context for ``tls``; one per distinct setting, reused by every job that sends it."""
    return _context(tls.certificate_chain, tls.insecure_skip_verify)


@functools.lru_cache(maxsize=64)
def _context(chain: tuple[str, ...], insecure: bool) -> ssl.SSLContext:
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cadata="\n".join(chain))


def job_context(tls: OriginTLS | None) -> ssl.SSLContext | None:
    """The context a job's origin requests carry, or ``None`` when the job sets no TLS of its own
    (its requests then use ``registries.tls`` for their host, or the default trust)."""
    if not overrides(tls):
        return None
    assert tls is not None
    return ssl_context(tls)


def overrides(tls: OriginTLS | None) -> bool:
    """Whether a job sets its own origin TLS. Such a job is never handed the operator's
    ``registries.credentials``: a CA or skip-verify chosen by the caller could lead them to a man in the middle."""
    return tls is not None and (bool(tls.certificate_chain) or tls.insecure_skip_verify)


def read_ca_file(path: str | Path) -> str:
    """The PEM text of a CA file (one certificate or a bundle); :class:`ValueError` says why it cannot be used."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CA_FILE_BYTES + 1)
    except OSError as error:
        raise ValueError(f"cannot read {path} ({error.strerror or error})") from None
    if len(raw) > MAX_CA_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CA_FILE_BYTES >> 20} MiB: it is not a CA file")
    text = raw.decode("ascii", "replace")
    if _PEM_BEGIN not in text:
        raise ValueError(f"{path} holds no PEM certificate ({_PEM_BEGIN})")
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as error:
        raise ValueError(f"{path} is not a valid PEM certificate file ({error.__class__.__name__})") from None
    return text
