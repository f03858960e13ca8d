"""A fake Kraken proxy: ``GET /health`` and ``POST /registry/notifications``, recording what it got.

Kraken's proxy answers a notification at once and gives no progress; this fake does the same
(200 and nothing to poll). ``required_auth`` makes it refuse a notification without that
``Authorization`` value (401); ``status`` makes it answer every notification with that status.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes._server import FakeService, QuietHandler


class FakeKrakenProxy(FakeService):
    def __init__(self, *, required_auth: str | None = None, status: int = 200) -> None:
        self.required_auth = required_auth
        self.status = status
        self.notifications: list[dict[str, Any]] = []
        """Every accepted notification body, as received."""
        self.headers: list[dict[str, str]] = []
        """The headers of every notification request, accepted or not."""
        self._serve(_Handler)


class _Handler(QuietHandler):
    @property
    def fake(self) -> FakeKrakenProxy:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def do_GET(self) -> None:
        if self.path == "/health":
            self.send_body(200, b"OK", "text/plain")
        else:
            self.send_body(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        body = self.read_body()
        if self.path != "/registry/notifications":
            self.send_body(404, b"not found", "text/plain")
            return
        self.fake.headers.append(dict(self.headers.items()))
        if self.fake.required_auth is not None and self.headers.get("Authorization") != self.fake.required_auth:
            self.send_body(401, b"unauthorized", "text/plain")
            return
        if self.fake.status != 200:
            self.send_body(self.fake.status, b"kraken: build-index unavailable", "text/plain")
            return
        self.fake.notifications.append(json.loads(body))
        self.send_body(200, b"", "text/plain")
