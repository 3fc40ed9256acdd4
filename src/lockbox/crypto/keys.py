"""Key-encryption keys behind a provider interface, and the keyring services use.

The local provider keeps versioned 256-bit keys in a JSON file created 0600; Vault transit or a
cloud KMS implement the same three calls (wrap, unwrap, derive) without the key leaving them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lockbox.crypto import aead
from lockbox.crypto.exceptions import KeyFileError


class KeyProvider(Protocol):
    def active_version(self) -> int: ...

    def wrap(self, data_key: bytes, context: bytes) -> tuple[int, bytes]: ...

    def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes: ...

    def derive(self, version: int, purpose: str) -> bytes:
        """A 256-bit subkey for one purpose (audit checkpoint MACs, TOTP secrets)."""
        ...


class LocalKeyFile:
    """Versioned key-encryption keys in a local file readable by the service account only."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not path.exists():
            if not create:
                raise KeyFileError(f"key file {path} does not exist")
            self._create()
        self._check_mode()
        try:
            doc = json.loads(path.read_text())
            self._active = int(doc["active"])
            self._keys = {int(v): base64.b64decode(k) for v, k in doc["keys"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"key file {path} is not a Lockbox key file") from exc
        if self._active not in self._keys or any(len(k) != aead.KEY_BYTES for k in self._keys.values()):
            raise KeyFileError(f"key file {path} is damaged")

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"active": 1, "keys": {"1": base64.b64encode(aead.new_key()).decode()}}
        # O_EXCL + 0600 from the first byte: the key is never readable by others, not even briefly.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())

    def _check_mode(self) -> None:
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"key file {self.path} is readable by others (mode {mode:o}); chmod 600 it")

    def add_version(self) -> int:
        """Append a new active key version (rotation); old versions stay to unwrap existing keys."""
        version = max(self._keys) + 1
        self._keys[version] = aead.new_key()
        self._active = version
        doc = {"active": version, "keys": {str(v): base64.b64encode(k).decode() for v, k in self._keys.items()}}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        return version

    def active_version(self) -> int:
        return self._active

    def _key(self, version: int) -> bytes:
        try:
            return self._keys[version]
        except KeyError:
            raise KeyFileError(f"key version {version} is not in the key file") from None

    def wrap(self, data_key: bytes, context: bytes) -> tuple[int, bytes]:
        return self._active, aead.seal(self._key(self._active), data_key, context)

    def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        return aead.open_sealed(self._key(version), wrapped, context)

    def derive(self, version: int, purpose: str) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"lockbox " + purpose.encode()).derive(
            self._key(version)
        )


class Keyring:
    """What services use: data keys for threads and small sealed secrets, all through one provider."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider

    def new_data_key(self, owner: str) -> tuple[bytes, int, bytes]:
        """A fresh data key for ``owner`` (e.g. ``thread:<id>``), with its wrapped form and KEK version."""
        key = aead.new_key()
        version, wrapped = self.provider.wrap(key, aead.aad_for("data-key", owner))
        return key, version, wrapped

    def unwrap_data_key(self, owner: str, version: int, wrapped: bytes) -> bytes:
        return self.provider.unwrap(version, wrapped, aead.aad_for("data-key", owner))

    def seal_secret(self, purpose: str, owner: str, plaintext: bytes) -> bytes:
        version = self.provider.active_version()
        key = self.provider.derive(version, purpose)
        return version.to_bytes(4, "big") + aead.seal(key, plaintext, aead.aad_for(purpose, owner))

    def open_secret(self, purpose: str, owner: str, blob: bytes) -> bytes:
        version = int.from_bytes(blob[:4], "big")
        key = self.provider.derive(version, purpose)
        return aead.open_sealed(key, blob[4:], aead.aad_for(purpose, owner))

    def mac(self, purpose: str, message: bytes, version: int | None = None) -> tuple[int, bytes]:
        version = self.provider.active_version() if version is None else version
        key = self.provider.derive(version, purpose)
        return version, hmac.new(key, message, hashlib.sha256).digest()


def keyring_from_file(path: Path) -> Keyring:
    return Keyring(LocalKeyFile(path))
