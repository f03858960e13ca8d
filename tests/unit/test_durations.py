"""adapters/durations.py: durations as people write them, and what a bad one is told."""

from __future__ import annotations

import pytest

from adapters.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("90d", 7776000), ("30m", 1800), ("15s", 15), ("500ms", 0.5), (12, 12.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_duration_says_what_a_good_one_looks_like() -> None:
    with pytest.raises(ValueError, match="like 500ms, 30s, 15m, 12h or 90d"):
        parse_duration("soon")
