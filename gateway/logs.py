"""Logging: one JSON event per line for machines, plain lines in a terminal, secrets redacted.

The redaction filter is the last line of defence: code never logs a secret on purpose,
but an exception message might quote a header or a URL with credentials in it.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from typing import TextIO

import msgspec

log = logging.getLogger("gateway.http")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")

_SECRETS = re.compile(
    r"(?i)(bearer\s+|basic\s+)[A-Za-z0-9._~+/=-]+"
    r"|phg_[A-Za-z0-9_-]+"
    r"|((?:password|passwd|secret|token|access_token)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
    r"|(://[^/:@\s]+:)[^@/\s]+@"
)
DISCONNECT_LOGGED = "gateway.disconnect_logged"
"""Key the server sets in a request's ``scope["state"]`` once it has logged that request's disconnect."""
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
"""Record attributes that are not events' fields; ``color_message`` is uvicorn's ANSI-coloured copy of the message."""


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
    """Redacts secrets and stamps the current request id on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", "") and (current := request_id.get()):
            record.request_id = current
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
        event: dict[str, object] = {
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


def log_handler(stream: TextIO, json: bool = True) -> logging.Handler:
    """A handler writing ``stream`` as the gateway logs: secrets redacted, JSON lines unless ``json`` is false."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter() if json else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    return handler


QUIET_LOGGERS = ("httpx", "aiohttp")
"""Kept at WARNING: httpx logs every request URL at INFO, signed ones included."""


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """The process's logging: to stderr, JSON lines unless stderr is a terminal (or ``json`` says otherwise)."""
    root = logging.getLogger()
    root.handlers[:] = [log_handler(sys.stderr, not sys.stderr.isatty() if json is None else json)]
    root.setLevel(level)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
