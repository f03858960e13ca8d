"""A plain HTTP file server standing in for object storage (S3 and friends), counting requests.

- ``GET /files/NAME?ANY=QUERY`` serves ``files[NAME]`` (the query, a signature, is ignored).
- ``GET /private/NAME`` also wants ``X-Origin-Token: <token>`` (403 otherwise).
- ``GET /redirect/NAME`` answers 307 to ``redirects[NAME]`` (an absolute URL).
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from tests.fakes._server import FakeService, QuietHandler


class FileOrigin(FakeService):
    def __init__(self, files: dict[str, bytes] | None = None, *, token: str = "origin-secret") -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.redirects: dict[str, str] = {}
        self.token = token
        self.requests: list[tuple[str, dict[str, str]]] = []
        """Every request: its path with query, and its headers."""
        self._lock = threading.Lock()
        self._serve(_Handler)

    def count(self, fragment: str) -> int:
        with self._lock:
            return sum(1 for path, _ in self.requests if fragment in path)


class _Handler(QuietHandler):
    @property
    def origin(self) -> FileOrigin:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def do_GET(self) -> None:
        with self.origin._lock:
            self.origin.requests.append((self.path, dict(self.headers.items())))
        kind, _, name = urlsplit(self.path).path.lstrip("/").partition("/")
        if kind == "redirect" and name in self.origin.redirects:
            self.send_body(307, b"", "text/plain", {"Location": self.origin.redirects[name]})
            return
        if kind == "private" and self.headers.get("X-Origin-Token") != self.origin.token:
            self.send_body(403, b"forbidden", "text/plain")
            return
        if kind in ("files", "private") and name in self.origin.files:
            self.send_body(200, self.origin.files[name], "application/octet-stream")
            return
        self.send_body(404, b"no such file", "text/plain")
