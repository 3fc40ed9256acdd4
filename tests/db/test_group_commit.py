"""The writer: many concurrent units share commits, a failing unit rolls back alone, the chain stays linear."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lockbox.audit.chain import GENESIS, row_hash
from lockbox.audit.models import AuditRow
from lockbox.audit.service import record
from lockbox.db import Database
from lockbox.directory.models import Location
from lockbox.errors import InvalidInput


def _add(session: Session, *, n: int) -> int:
    session.add(Location(id=f"loc-{n}", name="x"))
    record(session, action="test.location.add", actor_id="tester", subject_id=f"loc-{n}")
    if n % 7 == 0:
        raise InvalidInput("every seventh unit fails")
    return n


def test_concurrent_units_commit_independently(standalone_db: Database) -> None:
    db = standalone_db
    futures = [db.submit(_add, n=n) for n in range(1, 201)]
    ok, failed = 0, 0
    for f in futures:
        try:
            f.result()
            ok += 1
        except InvalidInput:
            failed += 1
    assert failed == len([n for n in range(1, 201) if n % 7 == 0])
    locations = db.read_sync(lambda s: set(s.scalars(select(Location.id))))
    assert locations == {f"loc-{n}" for n in range(1, 201) if n % 7}
    rows = db.read_sync(lambda s: list(s.scalars(select(AuditRow).order_by(AuditRow.seq))))
    # Failed units left no audit row; the rest form one unbroken chain.
    assert len(rows) == ok
    prev = GENESIS
    for i, row in enumerate(rows, start=1):
        assert row.seq == i and row.prev_hash == prev and row.hash == row_hash(i, row, prev)
        prev = row.hash


def test_units_from_many_threads(standalone_db: Database) -> None:
    db = standalone_db
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: db.write_sync(_add, n=n), [n for n in range(1, 120) if n % 7]))
    assert len(results) == len(set(results))
    count = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(AuditRow)))
    assert count == len(results)


def test_reads_may_not_write(standalone_db: Database) -> None:
    with pytest.raises(RuntimeError):
        standalone_db.read_sync(lambda s: s.add(Location(id="x", name="y")))
