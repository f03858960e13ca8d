"""gateway/endpoints/jsonio.py: how deep a JSON body nests."""

from __future__ import annotations

from gateway.endpoints.jsonio import json_depth


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": "[[[[{{{", "b": [1, {"c": []}]}') == 4
    assert json_depth(b"[" * 1000 + b"]" * 1000) == 1000
