"""gateway/logs.py: secrets are redacted from log records."""

from __future__ import annotations

import logging

import pytest

from gateway.logs import RedactingFilter, redact


@pytest.mark.parametrize(
    "secret_text",
    [
        "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig",
        "token phg_AbCdEf0123456789",
        "password=hunter2",
        "https://robot:s3cr3t@harbor.example.com/v2/",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_log_redaction_hides_secrets(secret_text: str) -> None:
    record = logging.makeLogRecord({"msg": "failed with %s", "args": (secret_text,)})
    RedactingFilter().filter(record)
    for secret in ("eyJhbGciOiJSUzI1NiJ9", "phg_AbCdEf", "hunter2", "s3cr3t", "dXNlcjpwYXNz"):
        assert secret not in record.getMessage()
    assert "<redacted>" in redact(secret_text)
