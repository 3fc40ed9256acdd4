"""New-message notifications by email through a real SMTP server: PHI-free, coalesced, consented,
quiet hours, retries and dead letters, and exactly one email when a worker dies after sending."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from lockbox.clock import FrozenClock
from lockbox.db import Database
from lockbox.identity.models import User
from lockbox.jobs import service as jobs
from lockbox.jobs.models import Job
from lockbox.jobs.worker import Worker
from lockbox.notify.models import Notification
from tests.clinic import Clinic
from tests.factories import Api
from tests.notify.conftest import CLINIC, PUBLIC_URL, Sink, drain, free_port, set_contact

SUBJECT = "Biopsy results ZEBRA-SUBJECT-7731"
BODY = "Your melanoma biopsy came back ZEBRA-BODY-4410; start methotrexate."
PAT_EMAIL = "pat@mail.example"


def notifications(db: Database) -> list[Notification]:
    return db.read_sync(lambda s: list(s.scalars(select(Notification).order_by(Notification.created_at,
                                                                                Notification.id))))


def doctor_writes(client: TestClient, clinic: Clinic, *, subject: str = SUBJECT, body: str = BODY,
                  urgent: bool = False) -> str:
    r = Api(client, clinic.doctor).post("/threads", json={"subject": subject, "body": body, "patient": "pat.jones",
                                                          "confirm_recipients": True, "urgent": urgent})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def assert_phi_free(raw: str, *extra: str) -> None:
    for secret in ("ZEBRA", "Biopsy", "melanoma", "methotrexate", "House", "dr.house", "Pat", "pat.jones",
                   "100234", *extra):
        assert secret not in raw, secret


def test_patient_gets_one_phi_free_email_for_a_new_message(client: TestClient, clinic: Clinic, db: Database,
                                                           worker: Worker, smtp: Sink,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    set_contact(db, clinic.doctor, email="house@riverside.example")  # routine thread: the doctor is not emailed
    thread_id = doctor_writes(client, clinic)
    assert smtp.mails == []  # nothing leaves before a worker runs: the outbox is durable
    [n] = notifications(db)
    assert (n.channel, n.kind, n.status, n.user_id) == ("email", "new_message", "queued", clinic.patient.id)

    drain(worker)
    [(rcpt, mail)] = smtp.mails
    assert rcpt == [PAT_EMAIL]
    assert mail["Subject"] == f"New secure message from {CLINIC}"
    text = mail.get_payload(decode=True).decode()
    assert f"You have a new secure message from {CLINIC}" in text and PUBLIC_URL in text
    raw = mail.as_string()
    assert_phi_free(raw, thread_id)
    assert_phi_free("\n".join(r.getMessage() for r in caplog.records))
    [n] = notifications(db)
    assert n.status == "sent" and n.attempts == 1 and n.sent_at is not None
    assert n.provider_message_id == mail["Message-ID"] == f"<{n.id}@riverside.example>"
    # Delivered and finished: nothing runs again.
    assert drain(worker) == 0 and len(smtp.mails) == 1


def test_notifications_coalesce_per_thread_until_read(client: TestClient, clinic: Clinic, db: Database,
                                                      worker: Worker, smtp: Sink, clock: FrozenClock) -> None:
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    thread_id = doctor_writes(client, clinic)
    doctor = Api(client, clinic.doctor)
    for i in range(3):
        assert doctor.post(f"/threads/{thread_id}/messages", json={"body": f"also {i}"}).status_code == 201
    doctor_writes(client, clinic, subject="Another matter")  # another thread: its own notification
    assert len(notifications(db)) == 2
    drain(worker)
    assert len(smtp.mails) == 2
    doctor.post(f"/threads/{thread_id}/messages", json={"body": "one more, after the email went"})
    drain(worker)
    assert len(smtp.mails) == 2  # already told, not yet read: no second email for the thread
    clock.advance(60)
    assert Api(client, clinic.patient).post(f"/threads/{thread_id}/read").status_code == 204
    doctor.post(f"/threads/{thread_id}/messages", json={"body": "and one after they read"})
    drain(worker)
    assert len(smtp.mails) == 3


def test_patients_own_message_notifies_nobody(client: TestClient, clinic: Clinic, db: Database) -> None:
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    set_contact(db, clinic.nurse, email="nina@riverside.example")
    r = Api(client, clinic.patient).post("/threads", json={"subject": "Refill", "body": "Out of pills"})
    assert r.status_code == 201
    assert notifications(db) == []


def test_urgent_thread_emails_staff_members_only(client: TestClient, clinic: Clinic, db: Database,
                                                 worker: Worker, smtp: Sink) -> None:
    set_contact(db, clinic.nurse, email="nina@riverside.example")
    set_contact(db, clinic.other_team_doctor, email="wilson@riverside.example")
    doctor = Api(client, clinic.doctor)
    body = {"subject": "Consult ZEBRA-SUBJECT", "body": "ZEBRA-BODY", "to": ["nina.nurse"],
            "confirm_recipients": True}
    assert doctor.post("/threads", json=body).status_code == 201
    assert notifications(db) == []  # routine: the inbox is enough
    assert doctor.post("/threads", json={**body, "urgent": True}).status_code == 201
    drain(worker)
    [(rcpt, mail)] = smtp.mails
    assert rcpt == ["nina@riverside.example"]
    assert "ZEBRA" not in mail.as_string()


def test_urgent_thread_emails_its_assignee_not_the_rest_of_its_pool(client: TestClient, clinic: Clinic, db: Database,
                                                                   worker: Worker, smtp: Sink) -> None:
    set_contact(db, clinic.nurse, email="nina@riverside.example")
    doctor = Api(client, clinic.doctor)
    r = doctor.post("/threads", json={"subject": "Consult ZEBRA-SUBJECT", "body": "ZEBRA-BODY", "urgent": True,
                                      "to": ["nurse-triage"], "confirm_recipients": True})
    assert r.status_code == 201, r.text
    thread = r.json()["id"]
    assert doctor.post(f"/threads/{thread}/messages", json={"body": "ZEBRA-2"}).status_code == 201
    assert notifications(db) == []  # in the pool, not a member: the pool queue is enough
    assert Api(client, clinic.nurse).post(f"/threads/{thread}/claim").status_code == 200
    assert doctor.post(f"/threads/{thread}/messages", json={"body": "ZEBRA-3"}).status_code == 201
    drain(worker)
    [(rcpt, mail)] = smtp.mails
    assert rcpt == ["nina@riverside.example"]
    assert "ZEBRA" not in mail.as_string()


def test_urgent_thread_does_not_email_a_deactivated_member(client: TestClient, clinic: Clinic, db: Database,
                                                           worker: Worker, smtp: Sink) -> None:
    set_contact(db, clinic.nurse, email="nina@riverside.example")
    set_contact(db, clinic.other_team_doctor, email="wilson@riverside.example")
    doctor = Api(client, clinic.doctor)
    body = {"subject": "Consult ZEBRA-SUBJECT", "body": "ZEBRA-BODY", "to": ["nina.nurse", "dr.wilson"],
            "confirm_recipients": True, "urgent": True}
    r = doctor.post("/threads", json=body)
    assert r.status_code == 201, r.text
    drain(worker)
    assert sorted(rcpt for rcpt, _ in smtp.mails) == [["nina@riverside.example"], ["wilson@riverside.example"]]
    for member in (clinic.nurse, clinic.other_team_doctor):  # both read it: each would be told again
        assert Api(client, member).post(f"/threads/{r.json()['id']}/read").status_code == 204
    db.write_sync(lambda s: s.execute(update(User).where(User.id == clinic.nurse.id).values(active=False)))
    assert doctor.post(f"/threads/{r.json()['id']}/messages", json={"body": "ZEBRA-2"}).status_code == 201
    drain(worker)
    told = [n.user_id for n in notifications(db) if n.status == "sent"]
    assert told.count(clinic.other_team_doctor.id) == 2
    # Deactivated: nothing queued at all (delivery would only have suppressed it).
    assert [n.user_id for n in notifications(db)].count(clinic.nurse.id) == 1


def test_email_opt_out_is_recorded_as_suppressed_and_nothing_is_sent(client: TestClient, clinic: Clinic,
                                                                    db: Database, worker: Worker,
                                                                    smtp: Sink) -> None:
    set_contact(db, clinic.patient, email=PAT_EMAIL, phone="+15550100")
    me = Api(client, clinic.patient)
    assert me.post("/me/consent", json={"scope": "email", "status": "withdrawn",
                                        "terms_version": "2026-01"}).status_code == 201
    thread_id = doctor_writes(client, clinic)
    Api(client, clinic.doctor).post(f"/threads/{thread_id}/messages", json={"body": "again"})
    rows = {n.channel: n for n in notifications(db)}
    assert len(notifications(db)) == 2  # the suppression is recorded once per thread, SMS still queued
    assert rows["email"].status == "suppressed" and rows["email"].reason == "suppressed: opted out"
    assert rows["sms"].status == "queued"
    jobs_for = db.read_sync(lambda s: [j.payload["notification_id"] for j in s.scalars(select(Job))])
    assert rows["email"].id not in jobs_for
    drain(worker)
    assert smtp.mails == []


def test_opt_out_between_queueing_and_sending_wins(client: TestClient, clinic: Clinic, db: Database,
                                                   worker: Worker, smtp: Sink) -> None:
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    doctor_writes(client, clinic)
    # Withdrawing messaging consent withdraws every notification channel with it.
    assert Api(client, clinic.patient).post("/me/consent", json={"status": "withdrawn",
                                                                 "terms_version": "2026-01"}).status_code == 201
    drain(worker)
    assert smtp.mails == []
    [n] = notifications(db)
    assert (n.status, n.reason) == ("suppressed", "suppressed: opted out")


def test_quiet_hours_defer_until_they_end(client: TestClient, clinic: Clinic, db: Database, worker: Worker,
                                          smtp: Sink, clock: FrozenClock) -> None:
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    clock._now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # 03:00 in New York (EST)
    r = Api(client, clinic.patient).put("/me/notifications", json={"quiet_from": "22:00", "quiet_to": "07:30",
                                                                  "timezone": "America/New_York"})
    assert r.status_code == 200, r.text
    assert r.json() == {"quiet_from": "22:00:00", "quiet_to": "07:30:00", "timezone": "America/New_York"}
    doctor_writes(client, clinic)
    [n] = notifications(db)
    assert n.send_after == datetime(2026, 3, 2, 12, 30, tzinfo=UTC) and n.reason == "deferred: quiet hours"
    assert drain(worker) == 0 and smtp.mails == []
    clock.advance(4.5 * 3600 - 1)
    assert drain(worker) == 0
    clock.advance(1)
    drain(worker)
    assert len(smtp.mails) == 1


@pytest.mark.parametrize("prefs", [
    {"quiet_from": "22:00", "timezone": "UTC"},
    {"quiet_from": "22:00", "quiet_to": "22:00"},
    {"quiet_from": "22:00", "quiet_to": "07:00", "timezone": "Mars/Olympus_Mons"},
    {"quiet_from": "22:00", "quiet_to": "07:00", "timezone": "../../etc/passwd"},
    {"quiet_from": "25:00", "quiet_to": "07:00"},
])
def test_bad_quiet_hours_are_refused(client: TestClient, clinic: Clinic, prefs: dict[str, Any]) -> None:
    me = Api(client, clinic.patient)
    r = me.put("/me/notifications", json=prefs)
    assert r.status_code in (400, 422) and r.json()["error"] == "invalid_input"
    assert me.get("/me/notifications").json() == {"quiet_from": None, "quiet_to": None, "timezone": "UTC"}


def test_smtp_down_retries_with_backoff_then_dead_letter_for_admins(
        client: TestClient, clinic: Clinic, db: Database, worker: Worker, clock: FrozenClock) -> None:
    db.runtime.settings.smtp_port = free_port()  # nobody listens there
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    doctor_writes(client, clinic)
    assert drain(worker) == 1
    [n] = notifications(db)
    assert (n.status, n.attempts) == ("queued", 1) and n.reason == "failed: ConnectionRefusedError"
    assert drain(worker) == 0  # backing off
    clock.advance(2.5)
    assert drain(worker) == 1
    clock.advance(4.5)
    assert drain(worker) == 1
    clock.advance(600)  # (within the sessions' idle timeout)
    assert drain(worker) == 0
    [n] = notifications(db)
    assert (n.status, n.attempts) == ("failed", 3)
    [dead] = db.read_sync(jobs.dead_letters)
    assert dead.payload == {"notification_id": n.id}
    r = Api(client, clinic.admin).get("/admin/notifications", params={"status": "failed"})
    assert r.status_code == 200
    assert [(x["id"], x["username"], x["channel"], x["attempts"]) for x in r.json()] == [
        (n.id, "pat.jones", "email", 3)]
    assert Api(client, clinic.admin).get("/admin/notifications", params={"status": "sent"}).json() == []
    for who in (clinic.compliance, clinic.doctor, clinic.patient):
        assert Api(client, who).get("/admin/notifications").status_code == 404


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing in the worker catches it."""


def test_worker_dying_after_the_send_does_not_send_again(client: TestClient, clinic: Clinic, db: Database,
                                                         smtp: Sink, clock: FrozenClock,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    doctor_writes(client, clinic)

    def die(*_: Any, **__: Any) -> bool:
        raise _Killed()

    monkeypatch.setattr(jobs, "finish", die)  # the email went and was marked sent; the job never finishes
    first = Worker(db, name="doomed")
    with pytest.raises(_Killed):
        first.run_once()
    first.stop()
    monkeypatch.undo()
    assert len(smtp.mails) == 1
    survivor = Worker(db, name="survivor")
    assert survivor.run_once() == 0  # still leased to the dead worker
    clock.advance(jobs.LEASE_S + 1)
    assert survivor.run_once() == 1
    survivor.stop()
    assert len(smtp.mails) == 1
    assert db.read_sync(jobs.pending_count) == 0


def test_the_remaining_window_resends_with_the_same_message_id(client: TestClient, clinic: Clinic,
                                                               db: Database, smtp: Sink, clock: FrozenClock,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Dying between the server's 250 and the ``sent`` mark resends; the Message-ID lets clients dedupe."""
    from lockbox.notify import service as notify

    set_contact(db, clinic.patient, email=PAT_EMAIL)
    doctor_writes(client, clinic)

    def die(*_: Any, **__: Any) -> None:
        raise _Killed()

    monkeypatch.setattr(notify, "_mark_sent", die)
    first = Worker(db, name="doomed")
    with pytest.raises(_Killed):
        first.run_once()
    first.stop()
    monkeypatch.undo()
    clock.advance(jobs.LEASE_S + 1)
    survivor = Worker(db, name="survivor")
    assert survivor.run_once() == 1
    survivor.stop()
    assert [m["Message-ID"] for _, m in smtp.mails] == [smtp.mails[0][1]["Message-ID"]] * 2
    [n] = notifications(db)
    assert (n.status, n.attempts) == ("sent", 2)


def test_starttls_configured_never_falls_back_to_clear_text(client: TestClient, clinic: Clinic, db: Database,
                                                             worker: Worker, smtp: Sink) -> None:
    db.runtime.settings.smtp_starttls = True  # the test server offers no STARTTLS
    set_contact(db, clinic.patient, email=PAT_EMAIL)
    doctor_writes(client, clinic)
    drain(worker)
    assert smtp.mails == []
    [n] = notifications(db)
    assert (n.status, n.reason) == ("queued", "failed: SMTPNotSupportedError")
