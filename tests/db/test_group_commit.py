"""The writer: many concurrent units share commits, a failing unit rolls back alone, the chain stays linear."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import psycopg
import pytest
from sqlalchemy import Table, bindparam, func, insert, select
from sqlalchemy.orm import Session

from lockbox.app import build_database
from lockbox.audit.chain import GENESIS, row_hash
from lockbox.audit.models import AuditRow
from lockbox.audit.service import record
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.db.prepared import Prepared
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


_INSERT_LOCATION = Prepared(insert(cast(Table, Location.__table__)).values(id=bindparam("b_id"), name="x"))


def _mixed(session: Session, *, n: int) -> int:
    """Units that fail in each place a savepoint matters: before any statement, at their first prepared
    statement (on PostgreSQL sent in one pipeline with the savepoint), after an ORM write."""
    kind = n % 4
    if kind == 1:
        raise InvalidInput("fails before any statement")
    _INSERT_LOCATION.run(session, b_id="taken" if kind == 2 else f"mixed-{n}")
    record(session, action="test.location.add", actor_id="tester", subject_id=f"mixed-{n}")
    if kind == 3:
        session.add(Location(id=f"orm-{n}", name="x"))
        session.flush()
        raise InvalidInput("fails after writing")
    return n


def test_a_failing_unit_rolls_back_alone_wherever_it_fails(standalone_db: Database) -> None:
    db = standalone_db
    db.write_sync(lambda s: s.add(Location(id="taken", name="x")))
    futures = [db.submit(_mixed, n=n) for n in range(1, 101)]
    done = {}
    for n, f in enumerate(futures, start=1):
        try:
            done[n] = f.result()
        except InvalidInput:
            done[n] = "invalid"
        except (sqlite3.IntegrityError, psycopg.IntegrityError):  # a prepared statement's driver error
            done[n] = "duplicate"
    assert done == {n: {0: n, 1: "invalid", 2: "duplicate", 3: "invalid"}[n % 4] for n in done}
    locations = db.read_sync(lambda s: set(s.scalars(select(Location.id))))
    assert locations == {"taken"} | {f"mixed-{n}" for n in range(1, 101) if n % 4 == 0}
    audited = db.read_sync(lambda s: set(s.scalars(select(AuditRow.subject_id))))
    assert audited == {f"mixed-{n}" for n in range(1, 101) if n % 4 == 0}


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


def test_a_unit_that_loses_a_deadlock_to_another_process_runs_again(
        standalone_db: Database, settings: Settings, clock: FrozenClock, backend: str) -> None:
    """Two writers (as two server processes have) lock the same rows in opposite orders; PostgreSQL
    aborts one statement, and that unit is run again after the other batch commits: both succeed."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer per database: its writers queue, they never deadlock")
    from sqlalchemy import update

    first = standalone_db
    first.write_sync(lambda s: s.add_all([Location(id="loc-a", name="a"), Location(id="loc-b", name="b")]))
    second = build_database(settings, clock=clock)
    both_hold_one = threading.Barrier(2, timeout=10)
    attempts: list[str] = []

    def _rename(session: Session, *, order: tuple[str, str], name: str) -> str:
        attempts.append(name)
        session.execute(update(Location).where(Location.id == order[0]).values(name=name))
        session.flush()
        if attempts.count(name) == 1:  # only the first attempt waits: the retry must just run
            both_hold_one.wait()
        session.execute(update(Location).where(Location.id == order[1]).values(name=name))
        record(session, action="test.location.rename", actor_id="tester", subject_id=order[0])
        return name

    try:
        one = first.submit(_rename, order=("loc-a", "loc-b"), name="one")
        two = second.submit(_rename, order=("loc-b", "loc-a"), name="two")
        assert {one.result(timeout=30), two.result(timeout=30)} == {"one", "two"}
    finally:
        second.close()
    assert len(attempts) == 3  # one of them lost the deadlock and ran once more
    names = first.read_sync(
        lambda s: set(s.scalars(select(Location.name).where(Location.id.in_(["loc-a", "loc-b"])))))
    assert len(names) == 1  # the later unit renamed both rows: no half-applied unit
