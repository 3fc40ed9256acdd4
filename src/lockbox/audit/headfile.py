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
        version, mac = self.keyring.mac(PURPOSE, self._message(seq, hash_))
        line = json.dumps({"seq": seq, "hash": hash_, "key_version": version,
                           "mac": base64.b64encode(mac).decode()}) + "\n"
        try:
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
        except OSError as exc:  # the chain itself is committed; losing one head line is not fatal
            log.error("could not write audit head file: %s", type(exc).__name__)
        log.info("audit head seq=%d hash=%s", seq, hash_)

    def latest(self) -> Head | None:
        """The newest head line whose MAC verifies; forged or torn lines are skipped."""
        if not self.path.exists():
            return None
        best: Head | None = None
        for raw in self.path.read_text().splitlines():
            try:
                doc = json.loads(raw)
                seq, hash_ = int(doc["seq"]), str(doc["hash"])
                _, mac = self.keyring.mac(PURPOSE, self._message(seq, hash_), int(doc["key_version"]))
                if not hmac.compare_digest(base64.b64decode(doc["mac"]), mac):
                    continue
            except (ValueError, KeyError, TypeError):
                continue
            if best is None or seq > best.seq:
                best = Head(seq, hash_)
        return best
