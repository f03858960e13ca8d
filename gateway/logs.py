"""Logging: one JSON event per line for machines, plain lines in a terminal, secrets redacted.

The redaction filter is the last line of defence: code never logs a secret on purpose,
but an exception message might quote a header or a URL with credentials in it.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import msgspec

_SECRETS = re.compile(
    r"(?i)(bearer\s+|basic\s+)[A-Za-z0-9._~+/=-]+"
    r"|phg_[A-Za-z0-9_-]+"
    r"|((?:password|passwd|secret|token|access_token)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
    r"|(://[^/:@\s]+:)[^@/\s]+@"
)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(1) + "<redacted>"
        if match.group(2):
            return match.group(2) + "<redacted>"
        if match.group(3):
            return match.group(3) + "<redacted>@"
        return "<redacted>"

    return _SECRETS.sub(replace, text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_text:
            event["exception"] = record.exc_text
        return msgspec.json.encode(event).decode()


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """JSON lines unless stderr is a terminal (or ``json`` says otherwise)."""
    if json is None:
        json = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if json else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
