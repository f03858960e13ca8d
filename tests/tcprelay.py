"""A TCP relay on 127.0.0.1 that a test can hold shut, to freeze a backend mid-job.

While paused, connections are accepted but not forwarded, so a gateway fetching through the
relay is provably in the middle of a job; ``resume()`` lets them through.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.registry import free_port


class TcpRelay:
    def __init__(self, target_host: str, target_port: int, *, cut_first_after: int | None = None) -> None:
        """``cut_first_after``: close the first connection whose response passes that many bytes (once)."""
        self.target = (target_host, target_port)
        self.cut_first_after = cut_first_after
        self.cuts = 0
        self._cut_lock = threading.Lock()
        self.port = free_port()
        self.connections = 0
        self._open = threading.Event()
        self._open.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
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

    def close(self) -> None:
        self._stop.set()
        self._open.set()
        self._thread.join(5)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client, self.cut_first_after), daemon=True).start()

    def _serve(self, client: socket.socket, limit: int | None = None) -> None:
        self._open.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client, limit, self._cut), daemon=True).start()

    def _cut(self) -> bool:
        """Claim the one cut; False when another connection already took it."""
        with self._cut_lock:
            if self.cuts:
                return False
            self.cuts += 1
            return True


def _pipe(source: socket.socket, sink: socket.socket, limit: int | None = None, on_cut: object = None) -> None:
    sent = 0
    try:
        while data := source.recv(65536):
            if limit is not None and sent + len(data) > limit and callable(on_cut) and on_cut():
                sink.sendall(data[: limit - sent])
                break  # the connection dies mid-response, as a flaky network does
            sink.sendall(data)
            sent += len(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
