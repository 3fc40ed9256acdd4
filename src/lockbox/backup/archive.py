"""The encrypted backup container: a header, then AES-256-GCM chunks, the last one marked final.

Written by hand because no well-kept library streams an AEAD over a file of any size: ``cryptography``
seals whole buffers, and age (pyrage) encrypts in memory. The construction is the STREAM one (Hoang,
Reyhanitabar, Rogaway, Vizár 2015): nonce = random prefix || chunk counter || final flag, the header as
associated data, so a reordered, dropped, truncated or extended chunk, or an edited header, fails.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"LBXBAK01"
CHUNK = 1 << 20
_FINAL = 0x8000_0000
_TAG = 16
# scrypt at 2**15 x 8: 32 MiB and ~0.1 s per try; a stolen archive's passphrase costs that per guess.
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class ArchiveError(Exception):
    """The archive is not one, was altered or truncated, or the key is wrong (GCM cannot tell which)."""


class BackupKey:
    """Where the archive key comes from: a passphrase (scrypt) or a dedicated 32-byte key file (HKDF)."""

    def __init__(self, *, passphrase: str | None = None, key_file: Path | None = None) -> None:
        if (passphrase is None) == (key_file is None):
            raise ArchiveError("set exactly one of LOCKBOX_BACKUP_PASSPHRASE or LOCKBOX_BACKUP_KEY_FILE")
        if passphrase is not None and len(passphrase) < 12:
            raise ArchiveError("LOCKBOX_BACKUP_PASSPHRASE must be at least 12 characters")
        self.passphrase = passphrase
        self.secret = _read_key_file(key_file) if key_file is not None else None

    @property
    def kind(self) -> str:
        return "scrypt" if self.passphrase is not None else "keyfile"

    def derive(self, header: dict[str, object]) -> bytes:
        salt = base64.b64decode(str(header["salt"]))
        if header.get("kdf") != self.kind:
            raise ArchiveError(f"this archive was sealed with a {header.get('kdf')}, not a {self.kind}")
        if self.passphrase is not None:
            params = {k: int(header[k]) for k in ("n", "r", "p")}  # type: ignore[call-overload]
            return Scrypt(salt=salt, length=32, **params).derive(self.passphrase.encode())
        assert self.secret is not None
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"lockbox backup").derive(self.secret)


def _read_key_file(path: Path) -> bytes:
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise ArchiveError(f"backup key file {path} is readable by others; chmod 600 it")
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except OSError as exc:
        raise ArchiveError(f"backup key file {path} cannot be read: {exc.strerror}") from None
    except ValueError:
        raise ArchiveError(f"backup key file {path} is not base64") from None
    if len(raw) != 32:
        raise ArchiveError(f"backup key file {path} must hold 32 bytes (base64)")
    return raw


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if final else 0)


class SealingWriter:
    """A write-only file object (for tarfile's stream mode) that seals into ``out``."""

    def __init__(self, out: BinaryIO, key: BackupKey) -> None:
        self.out = out
        header: dict[str, object] = {"v": 1, "kdf": key.kind, "salt": base64.b64encode(os.urandom(16)).decode(),
                                     "prefix": base64.b64encode(os.urandom(7)).decode(), "chunk": CHUNK}
        if key.kind == "scrypt":
            header.update(_SCRYPT)
        self.header = json.dumps(header, sort_keys=True).encode()
        self._aead = AESGCM(key.derive(header))
        self._prefix = base64.b64decode(str(header["prefix"]))
        self._buf = bytearray()
        self._counter = 0
        self.written = 0
        out.write(MAGIC + struct.pack(">H", len(self.header)) + self.header)

    def write(self, data: bytes) -> int:
        self._buf += data
        # Keep at least one byte back: only close() knows which chunk is the last.
        while len(self._buf) > CHUNK:
            self._emit(bytes(self._buf[:CHUNK]), final=False)
            del self._buf[:CHUNK]
        return len(data)

    def _emit(self, chunk: bytes, *, final: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._counter, final), chunk, self.header)
        self.out.write(struct.pack(">I", len(sealed) | (_FINAL if final else 0)) + sealed)
        self._counter += 1
        self.written += len(chunk)

    def close(self) -> None:
        self._emit(bytes(self._buf), final=True)
        self._buf.clear()
        self.out.flush()


class OpeningReader:
    """A read-only file object over a sealed archive; raises ArchiveError on any alteration."""

    def __init__(self, src: BinaryIO, key: BackupKey) -> None:
        self.src = src
        if src.read(len(MAGIC)) != MAGIC:
            raise ArchiveError("not a Lockbox backup archive")
        try:
            (size,) = struct.unpack(">H", src.read(2))
            self.header = src.read(size)
            header = json.loads(self.header)
            self._prefix = base64.b64decode(header["prefix"])
            if len(self._prefix) != 7:
                raise ValueError
        except (struct.error, ValueError, KeyError, TypeError):
            raise ArchiveError("the archive header is damaged") from None
        self._aead = AESGCM(key.derive(header))
        self._counter = 0
        self._buf = b""
        self._done = False
        self.read_bytes = 0

    def _next(self) -> None:
        raw = self.src.read(4)
        if len(raw) < 4:
            raise ArchiveError("the archive is truncated")
        (word,) = struct.unpack(">I", raw)
        final, size = bool(word & _FINAL), word & ~_FINAL
        if size < _TAG or size > CHUNK + _TAG:
            raise ArchiveError("the archive is damaged")
        sealed = self.src.read(size)
        if len(sealed) < size:
            raise ArchiveError("the archive is truncated")
        try:
            self._buf = self._aead.decrypt(_nonce(self._prefix, self._counter, final), sealed, self.header)
        except InvalidTag:
            raise ArchiveError("the archive failed its integrity check (altered, or the wrong key)") from None
        self._counter += 1
        self.read_bytes += size + 4
        if final:
            if self.src.read(1):
                raise ArchiveError("the archive has data after its end")
            self._done = True

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not self._buf:
                if self._done:
                    break
                self._next()
                continue
            take = len(self._buf) if n < 0 else min(n - len(out), len(self._buf))
            out += self._buf[:take]
            self._buf = self._buf[take:]
        return bytes(out)


def new_key_file(path: Path) -> None:
    """Write a fresh 32-byte backup key, 0600 from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
