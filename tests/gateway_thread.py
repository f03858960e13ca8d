"""The gateway's own server (``gateway.launch``) on a thread of the test process.

A thread lives no longer than its test (or, for a shared one, its package): while it serves, its
environment is in ``os.environ`` and another test's patch of a process-wide name reaches its loop.

For tests that need no process boundary: the same app, guarded protocol and loopback HTTP as
``preheat-gateway serve``, without a Python start per gateway (half a second of CPU each).
What needs a process stays with ``tests.gateway_process``: SIGKILL and SIGTERM, peak memory,
the CLI's own output, ``serve``'s process-wide tuning, attacks on the server itself.

Its log lines are those of the server's thread (the event loop, where the gateway's work
runs), written as ``serve`` writes them to ``stderr.N.log``, so :meth:`logs` reads the same.
"""

from __future__ import annotations

import gc
import logging
import os
import ssl
import threading
from typing import TextIO
from unittest import mock

from gateway.config import load_config
from gateway.launch import gateway_server
from gateway.logs import QUIET_LOGGERS, log_handler
from gateway.serving import GuardedServer
from tests.gateway_process import GatewayUnderTest

STOP_SECONDS = 15.0


class _ThreadOnly(logging.Filter):
    def __init__(self, thread: threading.Thread) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread.ident


class GatewayThread(GatewayUnderTest):
    """One gateway served by a thread of this process until :meth:`stop`."""

    server: GuardedServer | None = None
    thread: threading.Thread | None = None

    def start(self, timeout: float = 20.0, *, verify: ssl.SSLContext | None = None) -> GatewayThread:
        """Serve, and wait until ``/readyz`` answers; ``verify``: it serves TLS, trusted so."""
        assert self.thread is None or not self.thread.is_alive(), "already serving"
        self.starts += 1
        self.stderr_path = self.workdir / f"stderr.{self.starts}.log"
        self._environment = mock.patch.dict(os.environ, self.extra_env)
        self._environment.start()
        server = self.server = gateway_server(load_config(str(self.config_path)))
        thread = self.thread = threading.Thread(target=server.run, name=f"gateway-{self.port}", daemon=True)
        self._log = self.stderr_path.open("w")
        self._attach_log(self._log, thread)
        thread.start()
        try:
            self.wait_ready(timeout, verify, thread.is_alive)
        except BaseException:
            self.stop()
            raise
        return self

    def _attach_log(self, stream: TextIO, thread: threading.Thread) -> None:
        self._handler = log_handler(stream)
        self._handler.addFilter(_ThreadOnly(thread))
        root = logging.getLogger()
        self._levels = [(root, root.level)] + [
            (logging.getLogger(n), logging.getLogger(n).level) for n in QUIET_LOGGERS
        ]
        root.addHandler(self._handler)
        if root.level > logging.INFO:  # serve logs INFO
            root.setLevel(logging.INFO)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    def stop(self, timeout: float = STOP_SECONDS) -> int | None:
        """As SIGTERM does: drain, answer what is under way, hand unfinished work back; then forget the thread."""
        if self.server is None or self.thread is None:
            return None
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        stuck = self.thread.is_alive()
        gc.collect()  # what the stopped gateway held in cycles (its cache layouts) is gone before the next starts
        logging.getLogger().removeHandler(self._handler)
        for logger, level in self._levels:
            logger.setLevel(level)
        self._log.close()
        self._environment.stop()
        self.server = None
        assert not stuck, f"gateway thread did not stop within {2 * timeout}s:\n{self.logs()}"
        return None

    def kill(self) -> None:
        """:meth:`stop`: a thread cannot be SIGKILLed (a test that crashes the gateway uses a process)."""
        self.stop()
