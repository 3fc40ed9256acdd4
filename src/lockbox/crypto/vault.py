"""HashiCorp Vault (or OpenBao) transit as the key provider: the key-encryption key never leaves Vault.

Data keys are wrapped by transit ``encrypt`` with the owner as associated data (a wrapped key moved to
another thread does not open), versions are transit key versions, ``add_version`` is transit
``rotate``, and per-purpose subkeys (audit checkpoint MACs, sealed TOTP secrets) are transit HMACs of
the purpose under a given key version: a PRF output, deterministic per version, never exported.
"""

from __future__ import annotations

import base64
import logging
import threading
from typing import Any

import hvac
import requests
from hvac.exceptions import InvalidRequest, VaultError

from lockbox.crypto.exceptions import DecryptionFailed, KeyFileError

log = logging.getLogger(__name__)

# Vault answered with an error, or could not be reached at all.
_FAILED = (VaultError, requests.RequestException)


class VaultTransit:
    def __init__(self, client: Any, *, key_name: str = "lockbox", mount_point: str = "transit",
                 create: bool = True) -> None:
        self.client = client
        self.key_name = key_name
        self.mount = mount_point
        self._lock = threading.Lock()
        self._latest: int | None = None
        if create:
            self._ensure_key()

    @classmethod
    def from_settings(cls, url: str, token: str | None, *, key_name: str, mount_point: str) -> VaultTransit:
        # token None: hvac reads VAULT_TOKEN from the environment, as the vault CLI does.
        client = hvac.Client(url=url, token=token, timeout=10)
        return cls(client, key_name=key_name, mount_point=mount_point)

    def _transit(self) -> Any:
        return self.client.secrets.transit

    def _ensure_key(self) -> None:
        try:
            self._transit().read_key(name=self.key_name, mount_point=self.mount)
        except hvac.exceptions.InvalidPath:
            self._transit().create_key(name=self.key_name, key_type="aes256-gcm96", mount_point=self.mount)
        except _FAILED as exc:
            raise KeyFileError(f"Vault transit key {self.key_name!r} cannot be read: {type(exc).__name__}") from None

    def _read_latest(self) -> int:
        try:
            doc = self._transit().read_key(name=self.key_name, mount_point=self.mount)
        except _FAILED as exc:
            raise KeyFileError(f"Vault transit key {self.key_name!r} cannot be read: {type(exc).__name__}") from None
        latest = int(doc["data"]["latest_version"])
        with self._lock:
            self._latest = latest
        return latest

    # -- provider -------------------------------------------------------------------------------

    def active_version(self) -> int:
        # Read each time: another process (``lockbox keys rotate``) may have rotated the key.
        return self._read_latest()

    def versions(self) -> list[int]:
        doc = self._transit().read_key(name=self.key_name, mount_point=self.mount)
        return sorted(int(v) for v in doc["data"]["keys"])

    def ready(self) -> bool:
        try:
            return self._read_latest() > 0
        except KeyFileError:
            return False

    def wrap(self, data_key: bytes, context: bytes) -> tuple[int, bytes]:
        try:
            result = self._transit().encrypt_data(
                name=self.key_name, plaintext=base64.b64encode(data_key).decode(),
                associated_data=base64.b64encode(context).decode(), mount_point=self.mount)
        except _FAILED as exc:
            raise KeyFileError(f"Vault refused to wrap a key: {type(exc).__name__}") from None
        ciphertext: str = result["data"]["ciphertext"]
        return _version_of(ciphertext), ciphertext.encode()

    def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        ciphertext = wrapped.decode("ascii", errors="replace")
        if _version_of(ciphertext) != version:
            raise DecryptionFailed("wrapped key does not match its recorded version")
        try:
            result = self._transit().decrypt_data(
                name=self.key_name, ciphertext=ciphertext, associated_data=base64.b64encode(context).decode(),
                mount_point=self.mount)
        except InvalidRequest:
            # Vault says "cipher: message authentication failed" for a key moved to another owner.
            raise DecryptionFailed("wrapped key failed its integrity check") from None
        except _FAILED as exc:
            raise KeyFileError(f"Vault refused to unwrap a key: {type(exc).__name__}") from None
        return base64.b64decode(result["data"]["plaintext"])

    def derive(self, version: int, purpose: str) -> bytes:
        try:
            result = self._transit().generate_hmac(
                name=self.key_name, hash_input=base64.b64encode(b"lockbox " + purpose.encode()).decode(),
                key_version=version, algorithm="sha2-256", mount_point=self.mount)
        except _FAILED as exc:
            raise KeyFileError(f"Vault refused a subkey for version {version}: {type(exc).__name__}") from None
        hmac_text: str = result["data"]["hmac"]
        return base64.b64decode(hmac_text.rsplit(":", 1)[1])

    def add_version(self) -> int:
        """Rotation: a new transit key version becomes the one new keys are wrapped with."""
        try:
            self._transit().rotate_key(name=self.key_name, mount_point=self.mount)
        except _FAILED as exc:
            raise KeyFileError(f"Vault refused to rotate the key: {type(exc).__name__}") from None
        return self._read_latest()


def _version_of(ciphertext: str) -> int:
    parts = ciphertext.split(":", 2)
    if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v") or not parts[1][1:].isdigit():
        raise DecryptionFailed("not a Vault transit ciphertext")
    return int(parts[1][1:])
