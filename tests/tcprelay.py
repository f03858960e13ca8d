"""A TCP relay on 127.0.0.1 between the gateway and a backend, which a test can shape.

- ``pause()`` holds new connections shut (accepted, not forwarded) until ``resume()``: a
  gateway fetching through it is provably in the middle of a job;
- ``cut_first_after``: the first connection whose answer passes that many bytes is cut there,
  once, as a flaky network does;
- ``rate_per_connection``: each connection's answer arrives at that many bytes a second, so a
  job stays PENDING while its progress moves; ``uncap()`` lets the rest through at full speed;
- ``rate_in_all``: all connections' answers together arrive at about that rate, slow enough to
  watch progress move in a browser.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.registry import free_port

TICK_SECONDS = 0.05
"""The longest a capped answer waits between two of its pieces."""


class TcpRelay:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        cut_first_after: int | None = None,
        rate_per_connection: int | None = None,
        rate_in_all: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.cut_first_after = cut_first_after
        self.rate_per_connection = rate_per_connection
        self.rate_in_all = rate_in_all
        self.cuts = 0
        self.connections = 0
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._next_send = time.monotonic()  # rate_in_all: when the next piece of any answer may leave
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name="tcp-relay", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def uncap(self) -> None:
        """From now on every connection, open or new, is relayed at full speed."""
        self.rate_per_connection = self.rate_in_all = None

    def close(self) -> None:
        self._stop.set()
        self._open.set()
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
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._open.wait()
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

    def _pipe(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        sent = 0
        try:
            while data := source.recv(self._piece() if answers else 65536):
                if answers and self._cuts_here(sent, len(data)):
                    assert self.cut_first_after is not None
                    sink.sendall(data[: self.cut_first_after - sent])
                    break
                if answers:
                    self._pace(len(data))
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(source)
            source.close()

    def _piece(self) -> int:
        if (rate := self.rate_per_connection) is not None:
            return max(1, int(rate * TICK_SECONDS))
        return 65536 if self.rate_in_all is None else 8192

    def _cuts_here(self, sent: int, size: int) -> bool:
        """Whether this piece passes ``cut_first_after`` and the one cut is still unclaimed."""
        limit = self.cut_first_after
        if limit is None or sent + size <= limit:
            return False
        with self._lock:
            if self.cuts:
                return False
            self.cuts += 1
            return True

    def _pace(self, size: int) -> None:
        """Sleep as long as the configured rates say ``size`` bytes take."""
        delay = 0.0
        if (rate := self.rate_per_connection) is not None:
            delay = size / rate
        if (shared := self.rate_in_all) is not None:
            with self._lock:
                start = max(self._next_send, time.monotonic())
                self._next_send = start + size / shared
            delay = max(delay, start - time.monotonic())
        if delay > 0:
            time.sleep(delay)
