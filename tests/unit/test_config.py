"""gateway/config.py: how a config's mistakes are reported."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, build_config


def test_a_value_outside_a_fixed_set_is_reported_with_the_allowed_ones() -> None:
    mirror = {"id": 1, "name": "m", "adapter": "mirror", "endpoints": [{"url": "http://127.0.0.1:5000"}]}
    with pytest.raises(ConfigError) as raised:
        build_config({"auth": {"mode": "sometimes"}, "clusters": [{**mirror, "verify": 7}]}, source="test")

    assert raised.value.errors == [
        "auth.mode: invalid enum value 'sometimes' (allowed: none, required)",
        "clusters[0].verify: expected str, got int (allowed: digest, size)",
    ]


def test_a_mistyped_nested_key_is_reported_once() -> None:
    bad = {"registries": {"credentials": [{"host": "h", "username": "u", "passwrd": "x"}]}}
    with pytest.raises(ConfigError) as error:
        build_config(bad, source="test")
    assert error.value.errors == ["registries.credentials[0].passwrd: unknown key"]
