"""The node DaemonSet's writer: containerd hosts.toml files from the chart's ConfigMap onto the node.

Reads hosts.json (origin host -> hosts.toml text) from the directory the ConfigMap is mounted
at, writes <hosts dir>/<host>/hosts.toml for each (atomically: a temporary file renamed over
the old one), removes the directories it wrote before that are no longer listed (each carries
a marker file; nothing else is touched), then waits for SIGTERM. containerd reads hosts.toml
on every pull: no restart is needed. A values change rolls the DaemonSet, which rewrites.

    python write_hosts.py CONFIG_DIR HOSTS_DIR [--once]
"""

import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

MARKER = ".written-by-preheat-gateway"


def write(config_dir: Path, hosts_dir: Path) -> list[str]:
    wanted = json.loads((config_dir / "hosts.json").read_text())
    hosts_dir.mkdir(parents=True, exist_ok=True)
    for host, text in sorted(wanted.items()):
        if not host or host.startswith(".") or "/" in host:
            raise SystemExit(f"write_hosts: {host!r} is not a registry host")
        directory = hosts_dir / host
        directory.mkdir(exist_ok=True)
        (directory / MARKER).touch()
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".hosts.toml.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, directory / "hosts.toml")
        print(f"write_hosts: {directory / 'hosts.toml'}", flush=True)
    for directory in sorted(hosts_dir.iterdir()):
        if directory.name not in wanted and (directory / MARKER).is_file():
            (directory / "hosts.toml").unlink(missing_ok=True)
            (directory / MARKER).unlink()
            with contextlib.suppress(OSError):  # something else lives there too: leave it
                directory.rmdir()
            print(f"write_hosts: removed {directory / 'hosts.toml'}", flush=True)
    return sorted(wanted)


def main(argv: list[str]) -> int:
    config_dir, hosts_dir = Path(argv[1]), Path(argv[2])
    write(config_dir, hosts_dir)
    if "--once" in argv:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
