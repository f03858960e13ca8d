"""A network namespace of the test's own, with a DNS server whose answers the test scripts.

DNS rebinding needs a name whose answers change between two lookups, looked up by the real
system resolver (getaddrinfo) of a real gateway process. So the test makes a network namespace
with only a loopback interface (plus one non-loopback address on it, so that getaddrinfo's
``AI_ADDRCONFIG`` returns IPv4 answers), runs :class:`ScriptedDNS` on its 127.0.0.1:53, and
points the namespace's ``/etc/resolv.conf`` at it (``ip netns exec`` bind-mounts
``/etc/netns/<name>/resolv.conf`` over it for the gateway process).

While :func:`network_namespace` is active the test's own main thread lives in the namespace
(``setns``), so everything it starts there (hostile servers, the DNS server, the health watch,
the gateway process) shares it. The namespace has no route anywhere but loopback: the
"public" answer (:data:`PUBLIC`) cannot be reached, a connect to it fails at once, and no
packet ever leaves the machine.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.registry import MissingPrerequisite

PUBLIC = "192.88.99.7"
"""A global address (``ipaddress`` calls TEST-NET addresses private, so the URL policy would refuse
them at create time); unroutable inside the namespace."""
LOOPBACK = "127.0.0.1"
_CLONE_NEWNET = 0x40000000
_A, _AAAA, _IN = 1, 28, 1


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@contextmanager
def network_namespace() -> Iterator[str]:
    """A fresh network namespace the calling thread lives in until the block ends; yields its name.

    Raises :class:`tests.registry.MissingPrerequisite` where namespaces cannot be made (not root,
    no iproute2, a container without the privilege), for ``tests.conftest.require``.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise MissingPrerequisite("network namespaces need root and iproute2's ip (ip netns add)")
    name = f"phg-rebind-{os.getpid()}-{secrets.token_hex(3)}"
    etc = Path("/etc/netns") / name
    made = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True, text=True)
    if made.returncode != 0:
        raise MissingPrerequisite(f"ip netns add failed: {made.stderr.strip()[:200]}")
    try:
        for command in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "10.253.0.1/32", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True, capture_output=True)
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {LOOPBACK}\noptions timeout:1 attempts:2\n")
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(there)
            try:
                yield name
            finally:
                _setns(home)
        finally:
            os.close(there)
            os.close(home)
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass
class ScriptedDNS:
    """A UDP DNS server for A queries: each name answers from its script, the last entry repeating.

    ``script("x.test", [PUBLIC, LOOPBACK])`` answers the first A query for ``x.test`` with
    :data:`PUBLIC` and every later one with 127.0.0.1; ``cycle=True`` starts over instead. AAAA
    queries get no answer, unknown names NXDOMAIN. TTL 0 throughout. ``asked`` counts A queries.
    """

    scripts: dict[str, tuple[list[str], bool]] = field(default_factory=dict)
    asked: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((LOOPBACK, 53))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def script(self, name: str, answers: list[str], *, cycle: bool = False) -> None:
        with self._lock:
            self.scripts[name.lower()] = (answers, cycle)

    def close(self) -> None:
        self._socket.close()

    def _answer_for(self, name: str) -> str | None:
        with self._lock:
            if name not in self.scripts:
                return None
            answers, cycle = self.scripts[name]
            count = self.asked.get(name, 0)
            self.asked[name] = count + 1
            return answers[count % len(answers)] if cycle else answers[min(count, len(answers) - 1)]

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self._socket.recvfrom(512)
            except OSError:
                return
            try:
                reply = self._reply(query)
            except (IndexError, struct.error, UnicodeDecodeError):
                continue
            self._socket.sendto(reply, peer)

    def _reply(self, query: bytes) -> bytes:
        ident, _flags, _qd = struct.unpack("!HHH", query[:6])
        labels, at = [], 12
        while query[at]:
            labels.append(query[at + 1 : at + 1 + query[at]].decode("ascii"))
            at += 1 + query[at]
        qtype, qclass = struct.unpack("!HH", query[at + 1 : at + 5])
        question = query[12 : at + 5]
        name = ".".join(labels).lower()
        known = name in self.scripts
        address = self._answer_for(name) if known and qtype == _A and qclass == _IN else None
        rcode = 0 if known else 3
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 1 if address else 0, 0, 0)
        answer = b""
        if address:
            answer = struct.pack("!HHHIH", 0xC00C, _A, _IN, 0, 4) + socket.inet_aton(address)
        return header + question + answer
