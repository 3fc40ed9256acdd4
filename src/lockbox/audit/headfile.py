"""The audit chain head, kept outside the database so truncating the log's tail is detectable.

Each commit that adds audit rows appends ``{seq, hash, key_version, mac}`` to a file an operator
can ship elsewhere (syslog, object storage); the MAC comes from the key provider.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from lockbox.crypto.exceptions import CryptoError
from lockbox.crypto.keys import Keyring

log = logging.getLogger(__name__)

PURPOSE = "audit-head"


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str


class HeadFile:
    def __init__(self, path: Path, keyring: Keyring) -> None:
        self.path = path
        self.keyring = keyring
        self._lock = threading.Lock()

    def _message(self, seq: int, hash_: str) -> bytes:
        return f"lockbox-audit-head:{seq}:{hash_}".encode()

    def write(self, seq: int, hash_: str) -> None:
        """Called after commit: it must never raise, or committed units would be reported as failed."""
        try:
            version, mac = self.keyring.mac(PURPOSE, self._message(seq, hash_))
            line = json.dumps({"seq": seq, "hash": hash_, "key_version": version,
                               "mac": base64.b64encode(mac).decode()}) + "\n"
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
        except Exception as exc:  # the chain itself is committed; losing one head line is not fatal
            log.error("could not write audit head file: %s", type(exc).__name__)
        log.info("audit head seq=%d hash=%s", seq, hash_)

    def latest(self) -> Head | None:
        """The newest head line whose MAC verifies; forged or torn lines are skipped."""
        if not self.path.exists():
            return None
        best: Head | None = None
        # Streamed, not read whole: the file grows by a line per commit.
        with open(self.path, "rb") as fh:
            for raw in fh:
                try:
                    doc = json.loads(raw)
                    seq, hash_ = int(doc["seq"]), str(doc["hash"])
                    if best is not None and seq <= best.seq:
                        continue
                    _, mac = self.keyring.mac(PURPOSE, self._message(seq, hash_), int(doc["key_version"]))
                    if not hmac.compare_digest(base64.b64decode(doc["mac"]), mac):
                        continue
                except (ValueError, KeyError, TypeError, CryptoError):
                    continue
                best = Head(seq, hash_)
        return best
