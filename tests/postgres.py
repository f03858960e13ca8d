"""A fresh PostgreSQL database per test, on the server these machines run on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.registry import MissingPrerequisite

ADMIN_URL = os.environ.get("PREHEAT_GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def find_postgres() -> str:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return ADMIN_URL
    except psycopg.OperationalError as error:
        raise MissingPrerequisite(
            f"PostgreSQL is unreachable at {ADMIN_URL.split('@')[-1]}: {' '.join(str(error).split())[:200]}"
        ) from None


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create ``gw_test_<random>``, yield its URL, drop it afterwards."""
    name = f"gw_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
