"""An audit log of known shape to tamper with, and direct SQL access that bypasses the application."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, delete, select, update

from lockbox.audit.chain import row_hash
from lockbox.audit.models import AuditCheckpoint, AuditRow
from lockbox.audit.service import record
from lockbox.config import Settings
from lockbox.db import Database

ROWS = AuditRow.__table__
CHECKPOINTS = AuditCheckpoint.__table__
ENTRIES = 60  # with the test settings' checkpoint every 50: one signed checkpoint, at seq 50


def write_entries(db: Database, n: int, *, start: int = 0) -> None:
    for i in range(start, start + n):
        db.write_sync(lambda s, i=i: record(s, action="test.thing.happen", actor_id=f"u{i % 3}",
                                            subject_type="thing", subject_id=f"t{i}", n=i))


@pytest.fixture
def raw(settings: Settings) -> Iterator[Engine]:
    """The database as an attacker with SQL access sees it."""
    engine = create_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def log(standalone_db: Database) -> Database:
    write_entries(standalone_db, ENTRIES)
    return standalone_db


def tamper(engine: Engine, fn: Callable[[Connection], Any]) -> None:
    with engine.begin() as conn:
        fn(conn)


def row(conn: Connection, seq: int) -> dict[str, Any]:
    return dict(conn.execute(select(ROWS).where(ROWS.c.seq == seq)).mappings().one())


def renumber(conn: Connection, *, above: int, by: int) -> None:
    """Shift every row with seq > ``above`` by ``by``, in two steps so the primary key never collides."""
    conn.execute(update(ROWS).where(ROWS.c.seq > above).values(seq=-ROWS.c.seq))
    conn.execute(update(ROWS).where(ROWS.c.seq < 0).values(seq=-ROWS.c.seq + by))


def rehash_from(conn: Connection, seq: int) -> None:
    """Recompute the chain from ``seq`` to the end, as a careful forger would."""
    prev = row(conn, seq - 1)["hash"] if seq > 1 else "0" * 64
    for r in conn.execute(select(ROWS).where(ROWS.c.seq >= seq).order_by(ROWS.c.seq)).all():
        h = row_hash(r.seq, r, prev)
        conn.execute(update(ROWS).where(ROWS.c.seq == r.seq).values(prev_hash=prev, hash=h))
        prev = h


def drop_rows(conn: Connection, *seqs: int) -> None:
    conn.execute(delete(ROWS).where(ROWS.c.seq.in_(seqs)))
