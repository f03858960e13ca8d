"""HTTP handlers for the kraken dialect (not yet implemented)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
