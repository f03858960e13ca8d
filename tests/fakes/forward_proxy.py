"""A real, minimal HTTP forward proxy (what dfdaemon's proxy is to a node), counting requests.

It relays absolute-form ``GET http://host:port/path`` requests to their origin and streams the
answer back as it arrives, status and headers included (a 307 to object storage reaches the
client, which follows it through the proxy again). CONNECT is refused: tests use http origins.

For the tests: ``requests`` lists every URL asked for, ``credentials`` makes it demand
``Proxy-Authorization: Basic`` (407 otherwise) and never forward that header, and
``corrupt=True`` flips the first byte of every blob (``/blobs/`` URL) it relays (a proxy
serving bad data).
"""

from __future__ import annotations

import base64
import http.client
import threading
from urllib.parse import urlsplit

from tests.fakes._server import FakeService, QuietHandler

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
CHUNK = 64 * 1024


class ForwardProxy(FakeService):
    def __init__(self, *, credentials: tuple[str, str] | None = None, corrupt: bool = False, port: int = 0) -> None:
        self.credentials = credentials
        self.corrupt = corrupt
        self.requests: list[str] = []
        self.refused: int = 0
        self._lock = threading.Lock()
        self._serve(_Handler, port)

    def count(self, fragment: str = "") -> int:
        """How many relayed requests had ``fragment`` in their URL."""
        with self._lock:
            return sum(1 for url in self.requests if fragment in url)

    def record(self, url: str) -> None:
        with self._lock:
            self.requests.append(url)


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.0"  # close-delimited: a relayed body needs no length

    @property
    def proxy(self) -> ForwardProxy:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def do_CONNECT(self) -> None:
        self.send_body(501, b"CONNECT is not supported by this test proxy", "text/plain")

    def do_GET(self) -> None:
        target = urlsplit(self.path)
        if target.scheme != "http" or not target.hostname:
            self.send_body(400, b"a forward proxy wants an absolute http:// URL", "text/plain")
            return
        if self.proxy.credentials is not None:
            user, password = self.proxy.credentials
            want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if self.headers.get("Proxy-Authorization") != want:
                with self.proxy._lock:
                    self.proxy.refused += 1
                self.send_body(
                    407, b"proxy authentication required", "text/plain", {"Proxy-Authenticate": 'Basic realm="proxy"'}
                )
                return
        self.proxy.record(self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request("GET", path or "/", headers=headers)
            response = upstream.getresponse()
        except OSError as error:
            upstream.close()
            self.send_body(502, f"origin unreachable: {error}".encode(), "text/plain")
            return
        try:
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Via", "1.0 test-forward-proxy")
            self.end_headers()
            first = True
            while chunk := response.read(CHUNK):
                if first and self.proxy.corrupt and "/blobs/" in target.path:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                first = False
                self.wfile.write(chunk)
        except OSError:
            pass  # the client went away
        finally:
            upstream.close()
