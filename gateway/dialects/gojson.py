"""JSON read the way Go's ``encoding/json`` reads it, for the dialects whose senders are Go programs (Harbor).

Go matches object keys case-insensitively and leaves a field at its zero value for ``null``;
Harbor's legacy driver and its Kraken notifier rely on both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.jobs import InvalidRequest


def fold_keys(value: Any, where: str) -> dict[str, Any]:
    """One JSON object level as Go's ``encoding/json`` sees it: keys matched case-insensitively, nulls skipped."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object")
    return {str(key).lower(): item for key, item in value.items() if item is not None}


def decode_json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise InvalidRequest(f"request body is not valid JSON ({error})") from None


def convert(value: dict[str, Any], struct: type[Any], where: str) -> Any:
    try:
        return msgspec.convert(value, struct)
    except msgspec.ValidationError as error:
        raise InvalidRequest(f"invalid {where}: {str(error).replace('`', '').replace('$.', '')}") from None


def header_values(headers: Mapping[str, Any], where: str) -> dict[str, str]:
    """Harbor's ``map[string]interface{}`` headers as strings (a list joins like repeated headers)."""
    result: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(value, str):
            result[str(name)] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            result[str(name)] = ", ".join(value)
        else:
            raise InvalidRequest(f"{where}.{name} must be a string")
    return result
