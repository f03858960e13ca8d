"""Durations as operators write them in the config file and on the command line: ``500ms``, ``30s``, ``15m``, ``12h``, ``90d``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """``text`` (a duration, or a number of seconds) as seconds; :class:`ValueError` says what was wrong."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return float(text)
    match = _DURATION.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 500ms, 30s, 15m, 12h or 90d")
    return float(match[1]) * _UNITS[match[2]]
