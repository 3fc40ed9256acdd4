"""The writer process: units commit in a process of the server's own, their outcomes and after-commit
callbacks come back to the server, and a writer that dies fails only what it had."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from lockbox.app import build_database
from lockbox.audit.models import AuditCheckpoint
from lockbox.audit.service import record
from lockbox.config import Settings
from lockbox.db import Database, publish
from lockbox.db.uow import Credentials
from lockbox.db.writer_process import WriterGone
from lockbox.errors import Unauthenticated
from lockbox.jobs import service as jobs
from lockbox.jobs.models import Job
from lockbox.messaging import service as messaging

pytestmark = pytest.mark.slow


@pytest.fixture
def writing(settings: Settings) -> Iterator[Database]:
    """A database whose units go to a writer process (the system clock: the child keeps its own)."""
    db = build_database(settings)
    db.start_writer_process(settings)
    assert db.writer_process is not None
    assert db.writer_process.ready.wait(120), "the writer process did not come up"
    try:
        yield db
    finally:
        db.close()


def _jobs(db: Database) -> int:
    return db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Job).where(Job.kind == "writer.test")))


def test_units_commit_in_the_writer_process_and_their_callbacks_run_in_the_server(writing: Database) -> None:
    process = writing.writer_process
    assert process is not None and process.pid not in (None, os.getpid())
    published: list[tuple[list[str], dict[str, object]]] = []
    writing.runtime.publish = lambda users, event: published.append((list(users), event))
    woken = threading.Event()
    jobs.on_enqueue(woken.set)
    try:
        job_id = writing.write_sync(jobs.enqueue, kind="writer.test", payload={"n": 1})
        # The callback was the child's to send back: only the server's own workers list holds this event.
        assert woken.wait(5)
    finally:
        jobs.off_enqueue(woken.set)
    assert job_id is not None and _jobs(writing) == 1
    writing.write_sync(publish, user_ids=["u1", "u2", "u1"], event={"type": "read", "thread_id": "t1"})
    deadline = time.monotonic() + 5
    while not published and time.monotonic() < deadline:
        time.sleep(0.01)
    assert published == [(["u1", "u2"], {"type": "read", "thread_id": "t1"})]
    # Nothing was written by a thread of this process.
    assert writing._writer is None


def test_a_domain_error_comes_back_as_raised(writing: Database) -> None:
    with pytest.raises(Unauthenticated) as raised:
        writing.write_sync(messaging.mark_read, actor=Credentials(token="not-a-session"), thread_id="t1")
    assert raised.value.status == 401 and raised.value.body()["error"] == "unauthenticated"


def test_a_closure_is_written_by_the_server_beside_the_writer_process(writing: Database) -> None:
    writing.write_sync(lambda s: jobs.enqueue(s, kind="writer.test", payload={"n": 2}))
    writing.write_sync(jobs.enqueue, kind="writer.test", payload={"n": 3})  # and the child still writes after it
    assert _jobs(writing) == 2


def test_a_dead_writer_process_fails_what_it_had_and_the_server_writes_on(writing: Database) -> None:
    process = writing.writer_process
    assert process is not None and process.pid is not None
    os.kill(process.pid, signal.SIGSTOP)  # holds the unit below in flight
    in_flight = writing.submit(jobs.enqueue, kind="writer.test", payload={"n": 4})
    time.sleep(0.2)
    assert not in_flight.done()
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(WriterGone) as raised:
        in_flight.result(timeout=30)
    assert raised.value.status == 503
    assert process.gone.is_set()
    # Known to be gone, so the server takes writing back: nothing is refused after the one in flight.
    assert writing.write_sync(jobs.enqueue, kind="writer.test", payload={"n": 5}) is not None
    assert writing._writer is not None
    assert _jobs(writing) == 1  # the stopped child never ran the one it had


def test_closing_commits_what_was_sent_signs_the_head_and_ends_the_writer_process(settings: Settings) -> None:
    db = build_database(settings)
    db.start_writer_process(settings)
    process = db.writer_process
    assert process is not None and process.pid is not None
    pending = [db.submit(jobs.enqueue, kind="writer.test", payload={"n": n}) for n in range(20)]
    audited = db.submit(record, action="audit.log.export", rows=20)
    db.close()
    assert all(f.result(timeout=0) for f in pending) and audited.done()
    assert process.gone.is_set()
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # exited and reaped, not a zombie
    after = build_database(settings)
    try:
        assert _jobs(after) == 20
        assert after.read_sync(lambda s: s.scalar(select(func.count()).select_from(AuditCheckpoint))) >= 1
    finally:
        after.close()
