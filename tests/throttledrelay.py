"""A TCP relay on 127.0.0.1 that passes a backend's answers at a capped rate, to keep a job running.

A blob fetched through it arrives at ``bytes_per_second`` per connection, so the job stays
PENDING while its progress moves (the runner saves progress about once a second), as a
preheat over a slow link does; ``uncap()`` lets the rest through at full speed so the job ends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.registry import free_port

TICK_SECONDS = 0.05
"""The longest the relay waits between two pieces of a capped answer."""


class ThrottledRelay:
    def __init__(self, target_host: str, target_port: int, *, bytes_per_second: int) -> None:
        self.target = (target_host, target_port)
        self.bytes_per_second: int | None = bytes_per_second
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="throttled-relay", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def uncap(self) -> None:
        """From now on every connection, open or new, is relayed at full speed."""
        self.bytes_per_second = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.update((client, upstream))
        threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, capped: bool) -> None:
        try:
            while True:
                rate = self.bytes_per_second if capped else None
                data = source.recv(65536 if rate is None else max(1, int(rate * TICK_SECONDS)))
                if not data:
                    break
                sink.sendall(data)
                if rate is not None:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(source)
            source.close()
