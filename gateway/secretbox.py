"""Encrypts the registry credentials a job needs to resume after a crash.

Harbor's short-lived bearer header (and a caller's registry password) must survive a
restart, so a job can finish, but must never sit in the store in the clear. They are
sealed with Fernet (AES-128-CBC + HMAC) under a key from the environment or a key file,
and the store drops them when the job ends. Replicas sharing a store must share the key.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_env_or_file(cls, env: str | None, path: Path) -> SecretBox:
        """The key in ``$env``, else in ``path`` (created with mode 0600 when missing)."""
        if env:
            return cls(os.environ[env].encode())
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, secrets: dict[str, object]) -> bytes | None:
        if not any(secrets.values()):
            return None
        return self._fernet.encrypt(msgspec.json.encode(secrets))

    def open(self, sealed: bytes | None) -> dict[str, object]:
        """The secrets, or ``{}`` when there are none or the key changed (the job then runs without them)."""
        if not sealed:
            return {}
        try:
            return msgspec.json.decode(self._fernet.decrypt(sealed))
        except (InvalidToken, msgspec.DecodeError):
            return {}
