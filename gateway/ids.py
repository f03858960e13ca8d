"""Numbers read from a path or a header: ASCII digits only.

``str.isdigit()`` and ``int()`` accept far more than ``0-9`` ("²" is a digit to ``isdigit`` but
not to ``int``; "١٢" is 12 to both; ``int`` also takes spaces, signs and underscores), so a
peer could turn a lookup into a 500 or reach an id under another spelling. Everything that
parses an id or a length from outside goes through here.
"""

from __future__ import annotations

MAX_ID_DIGITS = 18
"""The longest id any store holds (2**63 - 1 has 19 digits; 18 keeps every value in range)."""


def ascii_number(text: str, max_digits: int = MAX_ID_DIGITS) -> int | None:
    """``text`` as a non-negative integer if it is 1 to ``max_digits`` ASCII digits, else None."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
