"""Consent to secure messaging: record, look up, and the one check every staff-initiated path calls."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.audit.service import record
from lockbox.consent.models import ConsentRecord
from lockbox.db.uow import runtime_of
from lockbox.errors import ConsentRequired

STATUSES = ("granted", "declined", "withdrawn")


def current(session: Session, *, patient_id: str, scope: str = "messaging") -> ConsentRecord | None:
    return session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.patient_id == patient_id, ConsentRecord.scope == scope)
        .order_by(ConsentRecord.recorded_at.desc(), ConsentRecord.id.desc())
        .limit(1)
    ).first()


def record_consent(
    session: Session,
    *,
    patient_id: str,
    status: str,
    terms_version: str,
    method: str,
    recorded_by: str | None,
    scope: str = "messaging",
) -> ConsentRecord:
    if status not in STATUSES:
        raise ValueError(f"unknown consent status {status!r}")
    rec = ConsentRecord(patient_id=patient_id, scope=scope, status=status, terms_version=terms_version,
                        method=method, recorded_by=recorded_by, recorded_at=runtime_of(session).clock.now())
    session.add(rec)
    session.flush()
    record(session, action="consent.record.change", actor_id=recorded_by, subject_type="patient",
           subject_id=patient_id, status=status, scope=scope, terms_version=terms_version, method=method)
    return rec


def has_consent(session: Session, *, patient_id: str, scope: str = "messaging") -> bool:
    rec = current(session, patient_id=patient_id, scope=scope)
    return rec is not None and rec.status == "granted"


def require_messaging_consent(session: Session, *, patient_id: str) -> None:
    """Staff may not start a thread with a patient who declined, withdrew or never consented."""
    if not has_consent(session, patient_id=patient_id):
        raise ConsentRequired()
