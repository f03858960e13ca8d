"""A real containerd for tests: Debian's ``containerd`` daemon, started by the test with its own dirs.

The daemon gets its own ``root``, ``state`` and gRPC socket (nothing of the machine's
``/var/lib/containerd`` or ``/run/containerd`` is touched) and only the plugins a pull needs: the
content store, metadata, images and leases. CRI, runtimes, tasks and the kernel snapshotters are
disabled, so it starts in well under a second as root in a sandbox. Pulls go through ``ctr``, the
client shipped in the same package, with ``--hosts-dir`` pointing at ``hosts.toml`` files the test
writes, exactly as a node's ``/etc/containerd/certs.d`` would.

No pytest here: a missing binary raises ``MissingPrerequisite`` so callers can ``require(...)`` it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.registry import MissingPrerequisite

__all__ = ["Containerd", "CtrResult", "find_containerd", "hosts_toml", "write_hosts_toml"]

# Plugins a content fetch never uses; disabling them keeps start-up fast and free of host needs.
_DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.internal.v1.tracing",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def find_containerd() -> tuple[str, str]:
    """``(containerd, ctr)`` paths; both come from Debian's ``containerd`` package."""
    daemon, client = shutil.which("containerd"), shutil.which("ctr")
    if not daemon or not client:
        raise MissingPrerequisite("containerd not installed: apt-get install containerd")
    if os.geteuid() != 0:
        raise MissingPrerequisite("containerd needs root to open its own root and state directories here")
    return daemon, client


def hosts_toml(
    server: str,
    mirrors: Sequence[str],
    headers: Mapping[str, str] | None = None,
    capabilities: Sequence[str] = ("pull", "resolve"),
) -> str:
    """A ``hosts.toml``: try each mirror in order (with ``headers``), then ``server``."""
    quoted = ", ".join(f'"{c}"' for c in capabilities)
    lines = [f'server = "{server}"']
    for mirror in mirrors:
        lines += ["", f'[host."{mirror}"]', f"  capabilities = [{quoted}]"]
        if headers:
            lines.append(f'  [host."{mirror}".header]')
            lines += [f'    {name} = "{value}"' for name, value in headers.items()]
    return "\n".join(lines) + "\n"


def write_hosts_toml(hosts_dir: Path, upstream_host: str, text: str) -> Path:
    """Write ``<hosts_dir>/<upstream host>/hosts.toml``, the layout containerd's ``config_path`` reads."""
    directory = hosts_dir / upstream_host
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.toml"
    path.write_text(text)
    return path


@dataclass(frozen=True)
class CtrResult:
    """One ``ctr`` run: its exit status and its output (stdout then stderr), ANSI colours removed."""

    args: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def __str__(self) -> str:
        return f"ctr {' '.join(self.args)} exited {self.returncode}:\n{self.output[-4000:]}"


class Containerd:
    """One ``containerd --config FILE`` process with its own root, state and socket under a workdir."""

    def __init__(self, workdir: Path, namespace: str = "tests") -> None:
        self.daemon, self.client = find_containerd()
        self.workdir = workdir
        self.namespace = namespace
        # A unix socket path must stay under 108 bytes: pytest's tmp paths can be longer.
        self._sockets = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
        self.address = str(self._sockets / "containerd.sock")
        self.root = workdir / "root"
        self.state = self._sockets / "state"
        self.config_path = workdir / "containerd.toml"
        self.log_path = workdir / "containerd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """containerd 1.6's config (version 2): only what a content pull needs."""
        disabled = ", ".join(f'"{p}"' for p in _DISABLED_PLUGINS)
        return (
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self.address}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            '  level = "info"\n'
            "[metrics]\n"
            '  address = ""\n'
        )

    def start(self, timeout: float = 20.0) -> Containerd:
        """Start the daemon and wait until ``ctr version`` reaches it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.daemon, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"containerd exited {self._process.returncode} at start:\n{self.log_tail()}")
            if Path(self.address).exists() and self.ctr("version", timeout=5).ok:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd not ready within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``), then remove the socket directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        shutil.rmtree(self._sockets, ignore_errors=True)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def ctr(self, *args: str, timeout: float = 60.0, debug: bool = False) -> CtrResult:
        """``ctr --address SOCKET --namespace NS ARGS``; ``debug`` adds containerd's resolver log."""
        command = [
            self.client,
            "--address",
            self.address,
            "--namespace",
            self.namespace,
            *(["--debug"] if debug else []),
            *args,
        ]
        result = subprocess.run(command, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        output = _ANSI.sub("", (result.stdout + result.stderr).decode(errors="replace"))
        return CtrResult(tuple(args), result.returncode, output)

    def fetch(
        self,
        reference: str,
        hosts_dir: Path,
        *,
        platform: str = "linux/amd64",
        user: str | None = None,
        plain_http: bool = True,
    ) -> CtrResult:
        """``ctr content fetch --hosts-dir DIR REF``: resolve and fetch into the content store, no unpacking.

        (Test layers are random bytes, not tarballs, so ``images pull``'s unpack step has nothing to do
        with the registry path under test.) The debug log shows each host tried and why it moved on.
        """
        args = ["content", "fetch", "--hosts-dir", str(hosts_dir), "--platform", platform]
        if plain_http:
            args.append("--plain-http")
        if user is not None:
            args += ["--user", user]
        return self.ctr(*args, reference, debug=True)

    def image_target(self, reference: str) -> str | None:
        """The digest the image record ``reference`` points to, or None when there is none."""
        result = self.ctr("images", "ls")
        for line in result.output.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == reference:
                return next((f for f in fields if f.startswith("sha256:")), None)
        return None

    def content(self, digest: str) -> bytes | None:
        """The bytes the content store holds under ``digest`` (``ctr content get``), or None."""
        command = [self.client, "--address", self.address, "--namespace", self.namespace, "content", "get", digest]
        result = subprocess.run(command, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        return result.stdout if result.returncode == 0 else None

    def verified(self, digest: str) -> bool:
        """True when the content store holds ``digest`` and its bytes hash to it."""
        data = self.content(digest)
        return data is not None and "sha256:" + hashlib.sha256(data).hexdigest() == digest
