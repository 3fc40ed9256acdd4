"""The audit chain head, kept outside the database so truncating the log's tail is detectable.

Each commit that adds audit rows appends ``{seq, hash, key_version, mac}`` to a file an operator
can ship elsewhere (syslog, object storage); the MAC comes from the key provider. The file is rotated by
size, since only the newest line matters for verification.
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
# A line per group commit is ~150 bytes: at 100 commits/s that is about 1.3 GB a day unrotated. Only the
# newest head is ever read, so a few small generations are plenty (shipped copies are the history).
MAX_BYTES = 16 * 1024 * 1024
GENERATIONS = 3


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str


class HeadFile:
    def __init__(self, path: Path, keyring: Keyring, *, max_bytes: int = MAX_BYTES,
                 generations: int = GENERATIONS) -> None:
        self.path = path
        self.keyring = keyring
        self.max_bytes = max_bytes
        self.generations = generations
        self._lock = threading.Lock()

    def generation(self, n: int) -> Path:
        """``audit-head.jsonl`` (0), then ``audit-head.jsonl.1`` (the one before) and so on."""
        return self.path if n == 0 else self.path.with_name(f"{self.path.name}.{n}")

    def _rotate(self) -> None:
        # Another process sharing the data dir may rotate at the same moment; the worst case is one
        # generation shifted twice, and every generation still holds signed heads.
        for n in range(self.generations - 1, 0, -1):
            older = self.generation(n)
            if older.exists():
                os.replace(older, self.generation(n + 1))
        os.replace(self.path, self.generation(1))

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
                    full = os.fstat(fd).st_size >= self.max_bytes
                finally:
                    os.close(fd)
                if full:
                    self._rotate()
        except Exception as exc:  # the chain itself is committed; losing one head line is not fatal
            log.error("could not write audit head file: %s", type(exc).__name__)
        log.info("audit head seq=%d hash=%s", seq, hash_)

    def latest(self) -> Head | None:
        """The newest head line whose MAC verifies, from the newest generation that has one; forged or
        torn lines are skipped."""
        for n in range(self.generations + 1):
            head = self._latest_in(self.generation(n))
            if head is not None:
                return head
        return None

    def _latest_in(self, path: Path) -> Head | None:
        if not path.exists():
            return None
        best: Head | None = None
        # Streamed, not read whole: up to max_bytes of lines.
        with open(path, "rb") as fh:
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
