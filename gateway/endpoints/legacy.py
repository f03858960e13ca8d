"""HTTP handlers for the legacy dialect (not yet implemented)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
