"""Durable jobs: enqueued with their unit, run once, retried with back-off, dead-lettered, leased."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.app import build_database
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.directory.models import Location
from lockbox.errors import InvalidInput
from lockbox.jobs import service
from lockbox.jobs.models import Job
from lockbox.jobs.worker import Worker

ran: Counter[str] = Counter()
_lock = threading.Lock()


def _count(session: Session, payload: dict[str, Any]) -> None:
    with _lock:
        ran[payload["n"]] += 1
    session.add(Location(id=f"job-{payload['n']}", name="made by a job"))


def _boom(session: Session, payload: dict[str, Any]) -> None:
    raise RuntimeError("patient text must not reach the job row")


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    ran.clear()
    service.register("test.count", _count)
    service.register("test.boom", _boom)
    yield
    service._handlers.pop("test.count", None)
    service._handlers.pop("test.boom", None)


def _enqueue_n(db: Database, n: int, **kw: Any) -> None:
    for i in range(n):
        db.write_sync(service.enqueue, kind="test.count", payload={"n": str(i)}, **kw)


def test_job_exists_only_if_its_unit_commits(standalone_db: Database) -> None:
    def _unit(session: Session) -> None:
        service.enqueue(session, kind="test.count", payload={"n": "x"})
        raise InvalidInput("the change failed")

    with pytest.raises(InvalidInput):
        standalone_db.write_sync(_unit)
    assert standalone_db.read_sync(service.pending_count) == 0


def test_worker_runs_each_job_once_with_its_effects(standalone_db: Database) -> None:
    _enqueue_n(standalone_db, 25)
    worker = Worker(standalone_db, batch=10)
    while worker.run_once():
        pass
    assert ran == Counter({str(i): 1 for i in range(25)})
    made = standalone_db.read_sync(lambda s: len(list(s.scalars(select(Location.id)))))
    assert made == 25
    assert standalone_db.read_sync(service.pending_count) == 0
    worker.stop()


def test_dedupe_key(standalone_db: Database) -> None:
    first = standalone_db.write_sync(service.enqueue, kind="test.count", payload={"n": "1"}, dedupe_key="k1")
    again = standalone_db.write_sync(service.enqueue, kind="test.count", payload={"n": "1"}, dedupe_key="k1")
    assert first and again is None


def test_payload_must_be_identifiers(standalone_db: Database) -> None:
    with pytest.raises(ValueError):
        standalone_db.write_sync(service.enqueue, kind="test.count", payload={"text": "chest pain since monday"})


def test_failures_back_off_then_dead_letter(standalone_db: Database, clock: FrozenClock) -> None:
    standalone_db.write_sync(service.enqueue, kind="test.boom", max_attempts=3)
    worker = Worker(standalone_db)
    assert worker.run_once() == 1
    assert worker.run_once() == 0  # backing off
    clock.advance(2.5)
    assert worker.run_once() == 1
    clock.advance(4.5)
    assert worker.run_once() == 1
    clock.advance(3600)
    assert worker.run_once() == 0
    dead = standalone_db.read_sync(service.dead_letters)
    assert len(dead) == 1 and dead[0].attempts == 3 and dead[0].last_error == "RuntimeError"
    assert "patient" not in (dead[0].last_error or "")
    worker.stop()


def test_a_dead_letter_runs_its_handlers_on_dead_callback_once_in_the_same_unit(standalone_db: Database,
                                                                                clock: FrozenClock) -> None:
    seen: list[tuple[dict[str, Any], str]] = []

    def _gave_up(session: Session, payload: dict[str, Any], error: str) -> None:
        seen.append((payload, error))
        session.add(Location(id=f"dead-{payload['n']}", name="recorded when the job gave up"))

    service.register("test.boom", _boom, on_dead=_gave_up)
    standalone_db.write_sync(service.enqueue, kind="test.boom", payload={"n": "7"}, max_attempts=2)
    worker = Worker(standalone_db)
    try:
        assert worker.run_once() == 1
        assert seen == []  # a failure with attempts left is a retry, not a death
        clock.advance(2.5)
        assert worker.run_once() == 1
    finally:
        worker.stop()
    assert seen == [({"n": "7"}, "RuntimeError")]
    assert standalone_db.read_sync(lambda s: s.get(Location, "dead-7")) is not None
    [dead] = standalone_db.read_sync(service.dead_letters)
    assert dead.attempts == 2 and dead.failed_at is not None


def test_expired_lease_is_claimed_again(standalone_db: Database, clock: FrozenClock) -> None:
    _enqueue_n(standalone_db, 1)
    claimed = standalone_db.write_sync(service.claim, worker="dead-worker")  # dies before finishing
    assert len(claimed) == 1
    other = Worker(standalone_db)
    assert other.run_once() == 0  # still leased
    clock.advance(service.LEASE_S + 1)
    assert other.run_once() == 1
    assert ran == Counter({"0": 1})
    # The dead worker's late finish does not count: the job is the other worker's now.
    assert standalone_db.write_sync(service.finish, job_id=claimed[0].id, worker="dead-worker") is False
    other.stop()


def test_racing_workers_in_separate_processes_run_each_job_once(settings: Settings, clock: FrozenClock,
                                                                standalone_db: Database) -> None:
    """Two Database objects (two writers, two connections) stand in for two worker processes."""
    _enqueue_n(standalone_db, 200)
    second = build_database(settings, clock=clock)
    workers = [Worker(standalone_db, batch=5), Worker(second, batch=5)]
    threads = [threading.Thread(target=lambda w=w: [None for _ in iter(w.run_once, 0)]) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(ran.values()) == 200 and set(ran.values()) == {1}
    done = standalone_db.read_sync(lambda s: len(list(s.scalars(select(Job.id).where(Job.done_at.is_not(None))))))
    assert done == 200
    for w in workers:
        w.stop()
    second.close()
