"""A reply reads what queueing its patient's notifications needs in one statement (``notify._known``): the
same answers as ``queue``'s own reads, through every consent change and notification history."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from lockbox.clock import FrozenClock
from lockbox.consent import service as consent
from lockbox.consent.models import ConsentRecord
from lockbox.db import Database
from lockbox.messaging.models import Participant
from lockbox.notify import service as notify
from lockbox.notify.models import Notification
from tests.clinic import Clinic
from tests.notify.test_email import doctor_writes

CHANNELS = ("email", "sms", "pager")


def _same_answers(db: Database, user_id: str, thread_id: str) -> None:
    def check(session: Session) -> None:
        known = notify._known(session, user_id, thread_id)
        for channel in CHANNELS:
            assert known.consent.allows(channel) == consent.allows_notification(
                session, user_id=user_id, channel=channel), channel
        for channel in ("email", "sms"):
            own = notify._newest(session, user_id, thread_id, channel, "new_message")
            fetched = known.newest[channel]
            assert (None if own is None else tuple(own)) == (None if fetched is None else tuple(fetched)), channel
        row = notify._LAST_READ.first(session, thread_id=thread_id, user_id=user_id)
        assert known.last_read_at == (row.last_read_at if row is not None else None)

    db.read_sync(check)


def test_the_one_statement_reads_what_queue_reads(client: TestClient, clinic: Clinic, db: Database,
                                                  clock: FrozenClock) -> None:
    tid = doctor_writes(client, clinic)
    patient, doctor = clinic.patient.id, clinic.doctor.id
    _same_answers(db, patient, tid)
    _same_answers(db, doctor, tid)  # staff: no consent to give, every channel allowed

    # Consent: each new record is the one in force, on its own scope or, for channels, through messaging.
    changes = [("email", "withdrawn"), ("sms", "declined"), ("messaging", "withdrawn"), ("messaging", "granted"),
               ("sms", "granted"), ("email", "granted"), ("messaging", "declined")]
    for scope, status in changes:
        clock.advance(1)
        record = ConsentRecord(patient_id=patient, scope=scope, status=status, terms_version="2026-01",
                               method="portal", recorded_at=clock.now())
        db.write_sync(lambda s, record=record: s.add(record))
        _same_answers(db, patient, tid)

    # Notifications: the newest of each channel, whatever its status, and the patient's last read.
    for channel, status, reason in [("email", "sent", None), ("sms", "suppressed", notify.OPTED_OUT),
                                    ("email", "queued", None), ("sms", "sent", None), ("email", "failed", "x")]:
        clock.advance(1)
        now = clock.now()
        row = Notification(user_id=patient, channel=channel, kind="new_message", status=status, reason=reason,
                           thread_id=tid, created_at=now, send_after=now, attempts=1,
                           sent_at=now if status == "sent" else None)
        db.write_sync(lambda s, row=row: s.add(row))
        _same_answers(db, patient, tid)
    db.write_sync(lambda s: s.execute(update(Participant).where(Participant.thread_id == tid,
                                                                 Participant.user_id == patient)
                                      .values(last_read_at=clock.now())))
    _same_answers(db, patient, tid)
