"""Key-encryption keys behind a provider interface, and the keyring services use.

The local provider keeps versioned 256-bit keys in a JSON file created 0600; Vault transit or a
cloud KMS implement the same three calls (wrap, unwrap, derive) without the key leaving them.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lockbox.crypto import aead
from lockbox.crypto.exceptions import DecryptionFailed, KeyFileError

if TYPE_CHECKING:
    from lockbox.config import Settings

log = logging.getLogger(__name__)


class KeyProvider(Protocol):
    def active_version(self) -> int: ...

    def wrap(self, data_key: bytes, context: bytes) -> tuple[int, bytes]: ...

    def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes: ...

    def derive(self, version: int, purpose: str) -> bytes:
        """A 256-bit subkey for one purpose (audit checkpoint MACs, TOTP secrets)."""
        ...


class LocalKeyFile:
    """Versioned key-encryption keys in a local file readable by the service account only.

    A running server notices when ``lockbox keys rotate`` (another process) rewrites the file, so
    keys re-wrapped under a new version stay readable without a restart.
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._lock = threading.Lock()
        if not path.exists():
            if not create:
                raise KeyFileError(f"key file {path} does not exist")
            self._create()
        self._retired: dict[int, dict[str, bytes]] = {}
        active, keys, self._stamp = self._load()
        self._state: tuple[int, dict[int, bytes]] = (active, keys)

    # -- file -----------------------------------------------------------------------------------

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._write_private({"active": 1, "keys": {"1": base64.b64encode(aead.new_key()).decode()}})
        try:
            # link() never replaces: when two processes start at once, one key file wins whole.
            os.link(tmp, self.path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        _fsync_dir(self.path.parent)

    def _write_private(self, doc: dict[str, object]) -> Path:
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        # O_EXCL + 0600 from the first byte: the key is never readable by others, not even briefly,
        # and a stale or planted temporary file is never reused with its own mode.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def _load(self) -> tuple[int, dict[int, bytes], tuple[int, int, int]]:
        path = self.path
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                mode = stat.S_IMODE(st.st_mode)
                if mode & (stat.S_IRWXG | stat.S_IRWXO):
                    raise KeyFileError(f"key file {path} is readable by others (mode {mode:o}); chmod 600 it")
                raw = fh.read()
        except OSError as exc:
            raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            active = int(doc["active"])
            keys = {int(v): base64.b64decode(k, validate=True) for v, k in doc["keys"].items()}
            # Retired versions keep only the subkeys that check old audit MACs (see ``retire``).
            self._retired = {int(v): {p: base64.b64decode(k, validate=True) for p, k in subkeys.items()}
                             for v, subkeys in doc.get("retired", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyFileError(f"key file {path} is not a Lockbox key file") from exc
        if active not in keys or any(len(k) != aead.KEY_BYTES for k in keys.values()):
            raise KeyFileError(f"key file {path} is damaged")
        return active, keys, (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                active, keys, self._stamp = self._load()
            except KeyFileError as exc:
                # Keep serving with the keys in memory; logged once per change of the file.
                self._stamp = stamp
                log.error("key file changed but was not reloaded: %s", exc)
                return
            self._state = (active, keys)

    def add_version(self) -> int:
        """Append a new active key version (rotation); old versions stay to unwrap existing keys."""
        with self._lock, _exclusive(self.path.with_name(self.path.name + ".lock")):
            # Start from the file, not memory: another process may have added a version since.
            _, keys, _ = self._load()
            version = max([*keys, *self._retired]) + 1
            keys = {**keys, version: aead.new_key()}
            tmp = self._write_private(self._doc(version, keys))
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
            active, keys, self._stamp = self._load()
            self._state = (active, keys)
        return version

    def _doc(self, active: int, keys: dict[int, bytes]) -> dict[str, object]:
        doc: dict[str, object] = {"active": active,
                                  "keys": {str(v): base64.b64encode(k).decode() for v, k in keys.items()}}
        if self._retired:
            doc["retired"] = {str(v): {p: base64.b64encode(k).decode() for p, k in subkeys.items()}
                              for v, subkeys in self._retired.items()}
        return doc

    def retire(self, version: int, *, keep: tuple[str, ...]) -> None:
        """Destroy key ``version``, keeping only its subkeys for ``keep`` purposes (checking old audit MACs).

        Whatever it wrapped, in this database or in any backup, can no longer be opened: callers first
        make sure nothing live still needs it.
        """
        with self._lock, _exclusive(self.path.with_name(self.path.name + ".lock")):
            active, keys, _ = self._load()
            if version == active:
                raise KeyFileError(f"key version {version} is the active one; rotate first")
            if version not in keys:
                raise KeyFileError(f"key version {version} is not in the key file (already retired?)")
            subkeys = {p: HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"lockbox " + p.encode())
                       .derive(keys[version]) for p in keep}
            self._retired = {**self._retired, version: subkeys}
            keys = {v: k for v, k in keys.items() if v != version}
            tmp = self._write_private(self._doc(active, keys))
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
            active, keys, self._stamp = self._load()
            self._state = (active, keys)

    def retired_versions(self) -> list[int]:
        self._refresh()
        return sorted(self._retired)

    def ready(self) -> bool:
        """The key file is still in place, private and whole (readiness: the next start would succeed)."""
        try:
            self._load()
        except KeyFileError:
            return False
        return True

    # -- provider -------------------------------------------------------------------------------

    def active_version(self) -> int:
        self._refresh()
        return self._state[0]

    def versions(self) -> list[int]:
        self._refresh()
        return sorted(self._state[1])

    def _key(self, version: int) -> bytes:
        key = self._state[1].get(version)
        if key is None:
            self._refresh()
            key = self._state[1].get(version)
        if key is None:
            if version in self._retired:
                raise KeyFileError(f"key version {version} was retired: what it wrapped can no longer be opened")
            raise KeyFileError(f"key version {version} is not in the key file")
        return key

    def wrap(self, data_key: bytes, context: bytes) -> tuple[int, bytes]:
        self._refresh()
        active, keys = self._state
        return active, aead.seal(keys[active], data_key, context)

    def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        return aead.open_sealed(self._key(version), wrapped, context)

    def derive(self, version: int, purpose: str) -> bytes:
        if version not in self._state[1]:
            self._refresh()
        kept = self._retired.get(version)
        if kept is not None and version not in self._state[1]:
            if purpose not in kept:
                raise KeyFileError(f"key version {version} was retired and kept no {purpose} subkey")
            return kept[purpose]
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"lockbox " + purpose.encode()).derive(
            self._key(version)
        )


def _fsync_dir(path: Path) -> None:
    # The rename or link is durable only once the directory entry is.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise key-file rewrites across processes (two ``keys rotate`` at once must not lose a key)."""
    fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Keyring:
    """What services use: data keys for threads and small sealed secrets, all through one provider."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider
        # A version's key never changes, so its subkeys can be kept (one HKDF per purpose, not per call).
        self._subkeys: dict[tuple[int, str], bytes] = {}

    def _subkey(self, version: int, purpose: str) -> bytes:
        key = self._subkeys.get((version, purpose))
        if key is None:
            key = self._subkeys[(version, purpose)] = self.provider.derive(version, purpose)
        return key

    def new_data_key(self, owner: str) -> tuple[bytes, int, bytes]:
        """A fresh data key for ``owner`` (e.g. ``thread:<id>``), with its wrapped form and KEK version."""
        key = aead.new_key()
        version, wrapped = self.provider.wrap(key, aead.aad_for("data-key", owner))
        return key, version, wrapped

    def unwrap_data_key(self, owner: str, version: int, wrapped: bytes) -> bytes:
        return self.provider.unwrap(version, wrapped, aead.aad_for("data-key", owner))

    def rewrap_data_key(self, owner: str, version: int, wrapped: bytes) -> tuple[int, bytes]:
        """The same data key wrapped under the active KEK (rotation): what it sealed stays readable."""
        context = aead.aad_for("data-key", owner)
        return self.provider.wrap(self.provider.unwrap(version, wrapped, context), context)

    def seal_secret(self, purpose: str, owner: str, plaintext: bytes) -> bytes:
        """A small secret (a TOTP seed) sealed under a per-purpose subkey, bound to purpose and owner."""
        version = self.provider.active_version()
        key = self._subkey(version, purpose)
        return version.to_bytes(4, "big") + aead.seal(key, plaintext, aead.aad_for(purpose, owner))

    def open_secret(self, purpose: str, owner: str, blob: bytes) -> bytes:
        if len(blob) < 4:
            raise DecryptionFailed("sealed secret is malformed")
        version = int.from_bytes(blob[:4], "big")
        key = self._subkey(version, purpose)
        return aead.open_sealed(key, blob[4:], aead.aad_for(purpose, owner))

    def reseal_secret(self, purpose: str, owner: str, blob: bytes) -> bytes:
        return self.seal_secret(purpose, owner, self.open_secret(purpose, owner, blob))

    @staticmethod
    def secret_version(blob: bytes) -> int:
        """The key version a sealed secret was made with (rotation re-seals older ones)."""
        return int.from_bytes(blob[:4], "big")

    def mac(self, purpose: str, message: bytes, version: int | None = None) -> tuple[int, bytes]:
        """HMAC-SHA256 under a per-purpose subkey; pass the stored ``version`` to check an old MAC."""
        version = self.provider.active_version() if version is None else version
        key = self._subkey(version, purpose)
        return version, hmac.new(key, message, hashlib.sha256).digest()


def keyring_from_file(path: Path) -> Keyring:
    return Keyring(LocalKeyFile(path))


def keyring_for(settings: Settings) -> Keyring:
    """The key provider the settings name: the local key file (default) or Vault transit."""
    if settings.key_provider == "vault":
        if not settings.vault_url:
            raise KeyFileError("LOCKBOX_KEY_PROVIDER=vault needs LOCKBOX_VAULT_URL")
        from lockbox.crypto.vault import VaultTransit

        return Keyring(VaultTransit.from_settings(settings.vault_url, settings.vault_token,
                                                  key_name=settings.vault_key_name,
                                                  mount_point=settings.vault_transit_mount))
    return keyring_from_file(settings.resolved_key_file)
