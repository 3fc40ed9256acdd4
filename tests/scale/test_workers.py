"""``lockbox worker`` processes on PostgreSQL: each job done once, and a killed worker's job re-run."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from websockets.sync.client import connect

from lockbox.config import Settings
from lockbox.directory.models import Location
from lockbox.jobs import service
from lockbox.jobs.models import Job
from tests.factories import make_location, make_user
from tests.scale.jobs_for_test import LEASE_S
from tests.serverproc import ServerProcess, WorkerProcess, seeded_database

pytestmark = pytest.mark.slow

PRELOAD = "tests.scale.jobs_for_test"


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _worker(settings: Settings, tmp_path: Path, name: str, **env: str) -> WorkerProcess:
    return WorkerProcess(settings.data_dir, settings.resolved_database_url, preload=PRELOAD, env=env,
                         log_path=tmp_path / f"{name}.log")


def test_two_workers_do_each_job_exactly_once(pg_settings: Settings, tmp_path: Path) -> None:
    jobs = 300
    with seeded_database(pg_settings) as db:
        make_location(db)  # the migration, and the location the job rows hang off
    workers = [_worker(pg_settings, tmp_path, f"w{i}") for i in range(2)]
    for w in workers:
        w.start()
    try:
        with seeded_database(pg_settings) as db:
            def _enqueue(session) -> None:  # type: ignore[no-untyped-def]
                for n in range(jobs):
                    service.enqueue(session, kind="test.count", payload={"n": str(n)})

            db.write_sync(_enqueue)

            def _done(session) -> int:  # type: ignore[no-untyped-def]
                return int(session.scalar(select(func.count()).select_from(Job).where(Job.done_at.is_not(None))))

            _wait(lambda: db.read_sync(_done) == jobs, 60, "every job done")
            rows = db.read_sync(lambda s: list(s.execute(select(Job.attempts, Job.locked_by, Job.failed_at))))
            made = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Location)
                                                   .where(Location.id.like("job-%"))))
    finally:
        for w in workers:
            w.stop()
    assert made == jobs  # one row per job: a second run would have collided on the key and failed
    assert all(r.attempts == 1 and r.failed_at is None for r in rows)
    by_process = Counter(str(r.locked_by).split(":")[1] for r in rows)
    print(f"jobs per worker process: {dict(by_process)}")
    assert set(by_process) == {str(w.pid) for w in workers}, "both workers took jobs"


def test_killed_workers_job_is_rerun_by_the_other_after_its_lease(pg_settings: Settings, tmp_path: Path) -> None:
    with seeded_database(pg_settings) as db:
        make_location(db)
        db.write_sync(service.enqueue, kind="test.stall", payload={"n": "stalled"})
    victim = _worker(pg_settings, tmp_path, "victim", LOCKBOX_TEST_STALL="1")
    victim.start()
    _wait(lambda: any(pg_settings.data_dir.glob("started-stalled-*")), 30, "the victim to start the job")
    victim.kill()  # SIGKILL mid-job: its transaction rolls back, its lease stays
    killed_at = time.monotonic()
    survivor = _worker(pg_settings, tmp_path, "survivor")
    survivor.start()
    try:
        with seeded_database(pg_settings) as db:
            def _job(session) -> Job:  # type: ignore[no-untyped-def]
                found = session.scalars(select(Job).where(Job.kind == "test.stall")).one()
                session.expunge(found)
                return found

            _wait(lambda: db.read_sync(_job).done_at is not None, LEASE_S + 30, "the job re-run")
            job = db.read_sync(_job)
            made = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Location)
                                                   .where(Location.id == "job-stalled")))
    finally:
        survivor.stop()
    print(f"re-run {time.monotonic() - killed_at:.1f} s after the kill (lease {LEASE_S} s)")
    assert job.attempts == 2
    assert str(job.locked_by).split(":")[1] == str(survivor.pid)
    assert made == 1


def test_events_from_a_worker_process_reach_sockets_on_a_server(
    pg_settings: Settings, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    redis_env = {"LOCKBOX_REDIS_URL": redis_url, "LOCKBOX_REDIS_PREFIX": redis_prefix}
    with seeded_database(pg_settings) as db:
        nurse = make_user(db, "nurse")
    server = ServerProcess.for_settings(pg_settings, env=redis_env, log_path=tmp_path / "server.log")
    worker = _worker(pg_settings, tmp_path, "worker", **redis_env)
    server.start(timeout=90)
    try:
        worker.start()
        with connect(server.base_url.replace("http", "ws") + "/api/v1/events", proxy=None,
                     additional_headers={"Authorization": f"Bearer {nurse.token}"}) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            with seeded_database(pg_settings) as db:
                db.write_sync(service.enqueue, kind="test.announce", payload={"user": nurse.id, "n": "t1"})
            assert json.loads(ws.recv(timeout=15)) == {"type": "probe", "thread_id": "t1"}
    finally:
        worker.stop()
        server.stop()
