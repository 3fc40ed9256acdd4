"""The hash chain: each audit row carries the SHA-256 of its own canonical form, which covers the
previous row's hash, so altering, removing, inserting or reordering a row breaks every hash after it.

Rows are chained at commit time by the writer, under the database's write lock (SQLite) or an
advisory lock (PostgreSQL), so concurrent units and processes never fork the chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, insert, select, text
from sqlalchemy.orm import Session

from lockbox.audit.models import AuditCheckpoint, AuditRow
from lockbox.db.uow import runtime_of

if TYPE_CHECKING:
    from lockbox.db.uow import Runtime

log = logging.getLogger(__name__)

GENESIS = "0" * 64
CHECKPOINT_PURPOSE = "audit-checkpoint"
# Any 64-bit constant; it names the audit chain among PostgreSQL advisory locks.
_PG_LOCK_ID = 0x10CB0A0D17


@dataclass
class Entry:
    at: datetime
    action: str
    actor_id: str | None
    session_id: str | None
    subject_type: str | None
    subject_id: str | None
    outcome: str
    details: dict[str, Any] = field(default_factory=dict)


class Chained(Protocol):
    """What the hash covers: an Entry before it is written, an AuditRow (or plain row) after."""

    @property
    def at(self) -> datetime: ...
    @property
    def action(self) -> str: ...
    @property
    def actor_id(self) -> str | None: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def subject_type(self) -> str | None: ...
    @property
    def subject_id(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def details(self) -> dict[str, Any]: ...


def canonical(seq: int, entry: Chained | Entry | AuditRow, prev_hash: str) -> bytes:
    doc = {
        "seq": seq,
        # In UTC, as the database gives it back: a clock in another zone must not change the hash.
        "at": entry.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "action": entry.action,
        "actor_id": entry.actor_id,
        "session_id": entry.session_id,
        "subject_type": entry.subject_type,
        "subject_id": entry.subject_id,
        "outcome": entry.outcome,
        "details": entry.details or {},
        "prev_hash": prev_hash,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def row_hash(seq: int, entry: Chained | Entry | AuditRow, prev_hash: str) -> str:
    return hashlib.sha256(canonical(seq, entry, prev_hash)).hexdigest()


def checkpoint_message(seq: int, hash_: str) -> bytes:
    return f"lockbox-audit-checkpoint:{seq}:{hash_}".encode()


def seal(conn: Connection, entries: list[Entry], runtime: Runtime) -> tuple[int, str]:
    """Chain and insert ``entries`` after the current head; returns the new head (seq, hash)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
    head = conn.execute(select(AuditRow.seq, AuditRow.hash).order_by(AuditRow.seq.desc()).limit(1)).first()
    seq, prev = (head[0], head[1]) if head else (0, GENESIS)
    rows = []
    every = runtime.settings.audit_checkpoint_every
    checkpoint_due = False
    for entry in entries:
        seq += 1
        h = row_hash(seq, entry, prev)
        rows.append(
            {
                "seq": seq,
                "at": entry.at,
                "action": entry.action,
                "actor_id": entry.actor_id,
                "session_id": entry.session_id,
                "subject_type": entry.subject_type,
                "subject_id": entry.subject_id,
                "outcome": entry.outcome,
                "details": entry.details,
                "prev_hash": prev,
                "hash": h,
            }
        )
        prev = h
        checkpoint_due = checkpoint_due or seq % every == 0
    conn.execute(insert(AuditRow), rows)
    if checkpoint_due:
        write_checkpoint(conn, seq, prev, runtime)
    return seq, prev


def write_checkpoint(conn: Connection, seq: int, hash_: str, runtime: Runtime) -> None:
    version, signature = runtime.keyring.mac(CHECKPOINT_PURPOSE, checkpoint_message(seq, hash_))
    existing = conn.execute(select(AuditCheckpoint.seq).where(AuditCheckpoint.seq == seq)).first()
    if existing is None:
        conn.execute(
            insert(AuditCheckpoint),
            {"seq": seq, "hash": hash_, "at": runtime.clock.now(), "key_version": version, "signature": signature},
        )


def checkpoint_head(session: Session) -> int | None:
    """Sign the current head now (at shutdown, before a backup): a later cut below it is then provable
    from the database alone, even without the head file. Returns the seq signed, if any."""
    conn = session.connection()
    head = conn.execute(select(AuditRow.seq, AuditRow.hash).order_by(AuditRow.seq.desc()).limit(1)).first()
    if head is None:
        return None
    write_checkpoint(conn, head.seq, head.hash, runtime_of(session))
    return int(head.seq)
