"""The writer: many concurrent units share commits, a failing unit rolls back alone, the chain stays linear."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import psycopg
import pytest
from sqlalchemy import Table, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
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
        except IntegrityError as exc:  # a prepared statement's error, raised as SQLAlchemy raises it
            assert isinstance(exc.orig, sqlite3.IntegrityError | psycopg.IntegrityError)
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


@pytest.fixture
def second_writer(standalone_db: Database, settings: Settings, clock: FrozenClock, backend: str) -> Iterator[Database]:
    """Another server process's writer on the same database, beside ``standalone_db``'s."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer per database: its writers queue, they never deadlock")
    second = build_database(settings, clock=clock)
    yield second
    second.close()


def _two_rows(db: Database, *ids: str) -> None:
    db.write_sync(lambda s: s.add_all([Location(id=i, name=i) for i in ids]))


def test_a_unit_that_loses_a_deadlock_to_another_process_runs_again(standalone_db: Database,
                                                                     second_writer: Database) -> None:
    """Two writers (as two server processes have) lock the same rows in opposite orders; PostgreSQL
    aborts one statement, and that unit is run again after the other batch commits: both succeed."""
    from sqlalchemy import update

    first, second = standalone_db, second_writer
    _two_rows(first, "loc-a", "loc-b")
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

    one = first.submit(_rename, order=("loc-a", "loc-b"), name="one")
    two = second.submit(_rename, order=("loc-b", "loc-a"), name="two")
    assert {one.result(timeout=30), two.result(timeout=30)} == {"one", "two"}
    assert len(attempts) == 3  # one of them lost the deadlock and ran once more
    names = first.read_sync(
        lambda s: set(s.scalars(select(Location.name).where(Location.id.in_(["loc-a", "loc-b"])))))
    assert len(names) == 1  # the later unit renamed both rows: no half-applied unit


def test_a_deadlock_loser_runs_again_only_once_the_winner_has_committed(standalone_db: Database,
                                                                       second_writer: Database) -> None:
    """The loser's retry waits for the transaction it lost to. Sent as soon as it lost, it could take a
    row the woken winner had not yet got to (under CPU load) and deadlock with it a second time: that
    was the occasional fourth attempt of the test above. Here the winner holds its rows a while."""
    import time

    from sqlalchemy import update

    first, second = standalone_db, second_writer
    _two_rows(first, "loc-a", "loc-b")
    both_hold_one = threading.Barrier(2, timeout=10)
    started: list[tuple[str, float]] = []
    finished: dict[str, float] = {}

    def _rename(session: Session, *, order: tuple[str, str], name: str) -> str:
        started.append((name, time.monotonic()))
        session.execute(update(Location).where(Location.id == order[0]).values(name=name))
        session.flush()
        if [n for n, _ in started].count(name) == 1:
            both_hold_one.wait()
        session.execute(update(Location).where(Location.id == order[1]).values(name=name))
        time.sleep(0.3)  # the winner: both rows held well past the loser's old 1-4 ms back-off
        finished[name] = time.monotonic()  # then it commits
        return name

    one = first.submit(_rename, order=("loc-a", "loc-b"), name="one")
    two = second.submit(_rename, order=("loc-b", "loc-a"), name="two")
    assert {one.result(timeout=30), two.result(timeout=30)} == {"one", "two"}
    assert len(started) == 3
    loser, retried_at = started[2]
    winner = "two" if loser == "one" else "one"
    assert retried_at >= finished[winner]


def _gated(db: Database, gate: threading.Event) -> None:
    """Hold ``db``'s writer until ``gate`` is set, so what is submitted meanwhile forms one batch."""
    started = threading.Event()

    def hold(session: Session) -> None:
        started.set()
        assert gate.wait(10)

    db.submit(hold)
    assert started.wait(10)


def test_a_batch_runs_its_units_in_thread_order_keeping_each_threads_own_order(standalone_db: Database) -> None:
    db = standalone_db
    ran: list[tuple[str | None, int]] = []

    def unit(session: Session, *, n: int, thread_id: str | None = None) -> int:
        ran.append((thread_id, n))
        return n

    gate = threading.Event()
    _gated(db, gate)
    submitted = [("t-c", 1), ("t-a", 2), (None, 3), ("t-c", 4), ("t-b", 5), ("t-a", 6), (None, 7)]
    futures = [db.submit(unit, n=n, **({"thread_id": t} if t else {})) for t, n in submitted]
    gate.set()
    assert [f.result(timeout=10) for f in futures] == [n for _, n in submitted]
    assert ran == [(None, 3), (None, 7), ("t-a", 2), ("t-a", 6), ("t-b", 5), ("t-c", 1), ("t-c", 4)]


def test_two_processes_batches_take_thread_rows_in_one_order_and_do_not_deadlock(standalone_db: Database,
                                                                                 second_writer: Database) -> None:
    """Each writer gets a batch writing the same two rows, submitted in opposite orders. Run as submitted,
    both would hold one row and wait for the other (a deadlock, a unit run twice); in thread order the
    second batch waits for the first to commit."""
    from sqlalchemy import update

    first, second = standalone_db, second_writer
    _two_rows(first, "t-a", "t-b")
    both_hold_one = threading.Barrier(2, timeout=1)
    runs: list[tuple[str, str]] = []

    def rename(session: Session, *, thread_id: str, name: str, lead: bool) -> None:
        runs.append((name, thread_id))
        session.execute(update(Location).where(Location.id == thread_id).values(name=name))
        session.flush()
        if lead:  # the batch's first unit: give the other batch time to take a row too
            with contextlib.suppress(threading.BrokenBarrierError):
                both_hold_one.wait()
        record(session, action="test.location.rename", actor_id="tester", subject_id=thread_id)

    gates = threading.Event(), threading.Event()
    _gated(first, gates[0])
    _gated(second, gates[1])
    futures = [first.submit(rename, thread_id="t-a", name="one", lead=True),
               first.submit(rename, thread_id="t-b", name="one", lead=False),
               second.submit(rename, thread_id="t-b", name="two", lead=True),
               second.submit(rename, thread_id="t-a", name="two", lead=False)]
    for gate in gates:
        gate.set()
    for f in futures:
        f.result(timeout=30)
    assert len(runs) == 4  # no unit lost a deadlock and ran again
    names = first.read_sync(lambda s: set(s.scalars(select(Location.name).where(Location.id.in_(["t-a", "t-b"])))))
    assert len(names) == 1  # one batch committed after the other, each whole
