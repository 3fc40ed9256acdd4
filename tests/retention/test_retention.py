"""Retention purges by crypto-shredding on schedule, a legal hold stops it, every purge is audited and the
audit chain still verifies. Time moves with the FrozenClock; the sweep runs as the worker's job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from lockbox.audit.models import AuditRow
from lockbox.audit.service import verify_chain
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.jobs.models import Job
from lockbox.messaging.models import Message, Thread
from lockbox.retention.models import LegalHold
from lockbox.retention.service import RetentionPolicyError, list_holds, policies, release_hold
from lockbox.retention.tasks import SWEEP, schedule
from tests.clinic import Clinic

DAY = 24 * 3600


def _sweep(db: Database) -> None:
    """The next periodic sweep: an interval later, queued and run by the app's in-process worker."""
    clock = db.runtime.clock
    assert isinstance(clock, FrozenClock)
    clock.advance(db.runtime.settings.retention_sweep_every_s)
    db.write_sync(schedule)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        due = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Job).where(
            Job.kind == SWEEP, Job.done_at.is_(None), Job.failed_at.is_(None),
            Job.run_at <= s.info["runtime"].clock.now())))
        if not due:
            return
        time.sleep(0.05)
    raise AssertionError("the retention sweep did not run")


def _threads(db: Database) -> set[str]:
    return set(db.read_sync(lambda s: list(s.scalars(select(Thread.id)))))


def _purges(db: Database) -> list[AuditRow]:
    return db.read_sync(lambda s: list(s.scalars(select(AuditRow).where(AuditRow.action == "retention.thread.purge")
                                                 .order_by(AuditRow.seq))))


@pytest.fixture
def threads(client: TestClient, clinic: Clinic) -> dict[str, str]:
    patient, doctor = clinic.api(client, clinic.patient), clinic.api(client, clinic.doctor)
    made = {}
    r = patient.post("/threads", json={"subject": "Refill", "body": "Could I get a refill of my inhaler?"})
    made["closed_patient"] = r.json()["id"]
    assert doctor.post(f"/threads/{made['closed_patient']}/close").status_code == 204
    r = patient.post("/threads", json={"subject": "Rash", "body": "A rash on my arm since Monday."})
    made["open_patient"] = r.json()["id"]
    r = doctor.post("/threads", json={"subject": "Curbside", "body": "Ten minutes for a rash photo?",
                                      "to": ["dr.wilson"], "confirm_recipients": True})
    assert r.status_code == 201, r.text
    made["staff"] = r.json()["id"]
    return made


def test_policies_purge_by_kind_and_age(client: TestClient, clinic: Clinic, db: Database, clock: FrozenClock,
                                        threads: dict[str, str]) -> None:
    _sweep(db)
    assert _threads(db) == set(threads.values())  # nothing is old yet

    clock.advance(31 * DAY)  # clinician chat: 30 days
    _sweep(db)
    assert _threads(db) == {threads["closed_patient"], threads["open_patient"]}
    gone = threads["staff"]
    assert db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Message)
                                           .where(Message.thread_id == gone))) == 0

    clock.advance(7 * 366 * DAY)  # patient threads: 7 years after closing; an open one is never purged
    _sweep(db)
    assert _threads(db) == {threads["open_patient"]}

    rows = _purges(db)
    assert [r.subject_id for r in rows] == [threads["staff"], threads["closed_patient"]]
    assert rows[1].details == {"kind": "patient", "patient_id": clinic.patient.id, "messages": 1,
                               "policy_days": policies(db.runtime.settings)["patient"].days}
    report = db.read_sync(verify_chain)
    assert report.ok, report.summary()


def test_legal_hold_on_a_patient_stops_the_purge_until_released(client: TestClient, clinic: Clinic, db: Database,
                                                                clock: FrozenClock, threads: dict[str, str]) -> None:
    compliance = clinic.api(client, clinic.compliance)
    # Only compliance and admin see holds; to others they do not exist.
    r = clinic.api(client, clinic.doctor).post("/legal-holds", json={"patient": "pat.jones", "reason": "Matter 7"})
    assert r.status_code == 404
    assert compliance.post("/legal-holds", json={"reason": "x"}).status_code == 400
    assert compliance.post("/legal-holds", json={"patient": "nobody", "reason": "x"}).status_code == 404
    r = compliance.post("/legal-holds", json={"patient": "pat.jones", "reason": "Litigation matter 2026-114"})
    assert r.status_code == 201, r.text
    hold = r.json()
    assert (hold["subject_type"], hold["subject_id"], hold["reason"]) == ("patient", clinic.patient.id,
                                                                          "Litigation matter 2026-114")

    assert [h["id"] for h in compliance.get("/legal-holds").json()] == [hold["id"]]
    # A second hold, released over the API at once: releasing twice is a conflict.
    other = compliance.post("/legal-holds", json={"thread": threads["staff"], "reason": "Review"}).json()
    r = clinic.api(client, clinic.admin).post(f"/legal-holds/{other['id']}/release")
    assert r.status_code == 200 and r.json()["released_at"]
    assert clinic.api(client, clinic.admin).post(f"/legal-holds/{other['id']}/release").status_code == 409
    assert [h["id"] for h in compliance.get("/legal-holds").json()] == [hold["id"]]

    clock.advance(8 * 366 * DAY)  # (every session has long expired: the rest goes through the service)
    _sweep(db)
    assert _threads(db) == {threads["closed_patient"], threads["open_patient"]}  # held; the staff chat went

    db.write_sync(release_hold, actor=None, hold_id=hold["id"])
    assert db.read_sync(list_holds, actor=None) == []
    _sweep(db)
    assert _threads(db) == {threads["open_patient"]}

    actions = db.read_sync(lambda s: [(r.action, r.subject_id, r.details) for r in s.scalars(
        select(AuditRow).where(AuditRow.action.like("retention.hold.%")).order_by(AuditRow.seq))])
    assert actions == [
        ("retention.hold.place", hold["id"], {"target_type": "patient", "target_id": clinic.patient.id, "via": "api"}),
        ("retention.hold.place", other["id"], {"target_type": "thread", "target_id": threads["staff"], "via": "api"}),
        ("retention.hold.release", other["id"], {"target_type": "thread", "target_id": threads["staff"],
                                                 "via": "api"}),
        ("retention.hold.release", hold["id"], {"target_type": "patient", "target_id": clinic.patient.id,
                                                "via": "cli"}),
    ]
    # The reason is sealed at rest and never in the audit log.
    assert b"Litigation" not in db.read_sync(lambda s: b"".join(
        r.reason_sealed for r in s.scalars(select(LegalHold))))
    assert db.read_sync(verify_chain).ok


def test_legal_hold_on_one_thread(client: TestClient, clinic: Clinic, db: Database, clock: FrozenClock,
                                  threads: dict[str, str]) -> None:
    r = clinic.api(client, clinic.admin).post("/legal-holds", json={"thread": threads["staff"], "reason": "HR case"})
    assert r.status_code == 201, r.text
    clock.advance(8 * 366 * DAY)
    _sweep(db)
    assert _threads(db) == {threads["staff"], threads["open_patient"]}


def test_policy_file_overrides_kind_by_kind(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "retention.yaml"
    path.write_text("staff: 90\ngroup: {days: 0}\n")
    rules = policies(settings.model_copy(update={"retention_policies": path}))
    assert (rules["staff"].days, rules["group"].days, rules["patient"].days) == (90, 0, settings.retention_patient_days)
    path.write_text("staff: {days: -1}\n")
    with pytest.raises(RetentionPolicyError):
        policies(settings.model_copy(update={"retention_policies": path}))


def test_retention_cli_holds_and_runs(standalone_db: Database, settings: Settings, clock: FrozenClock) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOCKBOX_")},
           "LOCKBOX_DATA_DIR": str(settings.data_dir), "LOCKBOX_DATABASE_URL": settings.resolved_database_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lockbox.cli", "retention", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    bad = cli("hold", "--thread", "f" * 32, "--reason", "x")
    assert bad.returncode == 2 and "No such thread" in bad.stderr
    assert cli("run", "--dry-run").stdout.strip() == '{"due": 0, "held": 0}'
    done = cli("run")
    assert done.returncode == 0 and '"purged": 0' in done.stdout, done.stderr


def test_a_backlog_is_purged_batch_after_batch(settings: Settings, clock: FrozenClock) -> None:
    from lockbox.app import build_database
    from lockbox.jobs.worker import Worker
    from tests.crypto.test_rotation import _thread
    from tests.factories import make_user

    db = build_database(settings.model_copy(update={"retention_batch": 2}), clock=clock)
    try:
        owner = make_user(db, "physician", sign_in=False)
        for i in range(5):
            db.write_sync(_thread, owner_id=owner.id, body=f"note {i}".encode())
        clock.advance(31 * DAY)
        db.write_sync(schedule)
        worker = Worker(db)
        runs = 0
        while worker.run_once():
            runs += 1
        assert _threads(db) == set() and len(_purges(db)) == 5
        assert runs == 3  # 2 + 2 + 1, each its own committed job; the next sweep waits for its slot
        pending = db.read_sync(lambda s: list(s.scalars(select(Job.run_at).where(Job.kind == SWEEP,
                                                                                  Job.done_at.is_(None)))))
        assert len(pending) == 1 and pending[0] > clock.now()
        worker.stop()
    finally:
        db.close()
