"""The way a Harbor create takes through the code, from the first middleware to the INSERT.

The app runs in-process on this thread (``httpx.ASGITransport``), and a profile hook records
every project module whose code runs in the request's own task: the runner and health checks,
which run in tasks of their own, are not counted. The test keeps the spine short
(endpoint → dialect → job service → store), as ``docs/design.md`` describes it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from gateway.app import create_app
from gateway.config import build_config

ROOT = Path(__file__).resolve().parents[2]
HARBOR_CREATE = {
    "type": "preheat",
    "args": {
        "type": "image",
        "url": "http://127.0.0.1:9/v2/library/app/manifests/1.0",
        "headers": {"Authorization": "Bearer harbor-token"},
        "scope": "single_seed_peer",
    },
    "scheduler_cluster_ids": None,
}
MAX_MODULES = 20


def modules_on_the_way(tmp: Path) -> list[str]:
    config = build_config(
        {
            "server": {"state_dir": str(tmp / "state")},
            "auth": {"mode": "none"},
            "registries": {"allow": ["127.0.0.1"]},
            "clusters": [{"id": 1, "name": "local", "adapter": "local", "path": str(tmp / "cache")}],
        },
        source="test",
    )
    app = create_app(config)
    seen: set[str] = set()

    async def create() -> int:
        request_task = asyncio.current_task()

        def on_event(frame: FrameType, event: str, _arg: Any) -> None:
            path = frame.f_code.co_filename
            if event == "call" and path.startswith(str(ROOT)) and asyncio.current_task() is request_task:
                seen.add(Path(path).relative_to(ROOT).as_posix())

        async with app.router.lifespan_context(app) as state:
            transport = httpx.ASGITransport(app=_with_state(app, state))
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                await client.post("/oapi/v1/jobs", json=HARBOR_CREATE)  # warm: imports, first-use caches
                sys.setprofile(on_event)
                try:
                    response = await client.post("/oapi/v1/jobs", json=HARBOR_CREATE)
                finally:
                    sys.setprofile(None)
        return response.status_code

    assert asyncio.run(create()) == 200
    return sorted(path for path in seen if path.startswith(("gateway/", "adapters/")))


def _with_state(app: Any, state: Any) -> Any:
    """The app with the lifespan's state in each request's scope, as a server passes it."""

    async def served(scope: Any, receive: Any, send: Any) -> None:
        await app({**scope, "state": dict(state or {})}, receive, send)

    return served


def test_a_create_reaches_the_insert_through_few_modules_and_the_spine_in_order(tmp_path: Path) -> None:
    modules = modules_on_the_way(tmp_path)
    assert {
        "gateway/endpoints/openapi.py",
        "gateway/dialects/openapi.py",
        "gateway/jobs.py",
        "gateway/store/sql.py",
    } <= set(modules), modules
    assert len(modules) <= MAX_MODULES, f"{len(modules)} modules: {modules}"
