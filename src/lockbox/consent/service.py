"""Consent: the append-only record per scope, and the one place that decides whether Lockbox may reach a
patient. Messaging calls ``require_messaging_consent``; notify calls ``allows_notification``.

Scopes: ``messaging`` (secure messaging itself), ``email`` and ``sms`` (notifications on that channel).
A channel without a record of its own follows the messaging consent, so a patient who agreed to secure
messaging gets notifications until they opt out of a channel; without messaging consent no channel is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, exists, select
from sqlalchemy.orm import Session

from lockbox.access import policy
from lockbox.audit.service import record
from lockbox.consent import schemas
from lockbox.consent.exceptions import NothingToWithdraw
from lockbox.consent.models import ConsentRecord
from lockbox.db.uow import runtime_of
from lockbox.errors import ConsentRequired, NotFound
from lockbox.identity.models import Patient, User

if TYPE_CHECKING:
    from lockbox.access.actor import Actor

STATUSES = ("granted", "declined", "withdrawn")
SCOPES = ("messaging", "email", "sms")
METHODS = ("portal", "staff", "directory")
# Notification channels that need the patient's consent, and the scope that holds it.
CHANNEL_SCOPES = {"email": "email", "sms": "sms"}


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
    actor: Actor | None = None,
) -> ConsentRecord:
    """Append a record (history is never rewritten); the newest record per scope is in force."""
    if status not in STATUSES:
        raise ValueError(f"unknown consent status {status!r}")
    if scope not in SCOPES:
        raise ValueError(f"unknown consent scope {scope!r}")
    if method not in METHODS:
        raise ValueError(f"unknown consent method {method!r}")
    rec = ConsentRecord(patient_id=patient_id, scope=scope, status=status, terms_version=terms_version,
                        method=method, recorded_by=recorded_by, recorded_at=runtime_of(session).clock.now())
    session.add(rec)
    session.flush()
    record(session, action="consent.record.change", actor=actor, actor_id=recorded_by, subject_type="patient",
           subject_id=patient_id, status=status, scope=scope, terms_version=terms_version, method=method,
           record_id=rec.id)
    return rec


def has_consent(session: Session, *, patient_id: str, scope: str = "messaging") -> bool:
    rec = current(session, patient_id=patient_id, scope=scope)
    return rec is not None and rec.status == "granted"


def allows(session: Session, *, patient_id: str, scope: str) -> bool:
    """Whether Lockbox may use ``scope`` for this patient now (see the module docstring)."""
    if not has_consent(session, patient_id=patient_id):
        return False
    if scope == "messaging":
        return True
    rec = current(session, patient_id=patient_id, scope=scope)
    return _scope_allowed("granted", rec.status if rec is not None else None, scope)


def _scope_allowed(messaging: str | None, own: str | None, scope: str) -> bool:
    """``allows`` on the newest status of the messaging scope and of ``scope`` itself (None: no record)."""
    if messaging != "granted":
        return False
    return scope == "messaging" or own is None or own == "granted"


def allows_notification(session: Session, *, user_id: str, channel: str) -> bool:
    """The check every notification passes, when queued and again when sent. Staff have no consent to
    give; a patient is reached only on a channel they have not opted out of (and never by pager)."""
    patient = session.get(Patient, user_id)
    if patient is None:
        return True
    scope = CHANNEL_SCOPES.get(channel)
    return scope is not None and allows(session, patient_id=user_id, scope=scope)


class NotificationConsent(NamedTuple):
    """``allows_notification`` for every channel of one user, read in one statement (the send path: a
    reply notifies its patient on two channels, each check several reads, each read a round trip)."""

    is_patient: bool
    statuses: dict[str, str | None]  # scope -> the newest record's status, None without one

    def allows(self, channel: str) -> bool:
        if not self.is_patient:
            return True
        scope = CHANNEL_SCOPES.get(channel)
        return scope is not None and _scope_allowed(self.statuses["messaging"], self.statuses.get(scope), scope)


def _newest_status(scope: str) -> Any:
    c = cast(Table, ConsentRecord.__table__).c
    return (select(c.status).where(c.patient_id == bindparam("user_id"), c.scope == scope)
            .order_by(c.recorded_at.desc(), c.id.desc()).limit(1).scalar_subquery().label(scope))


# What ``NotificationConsent`` is read from, for the account bound as ``user_id``: columns a caller puts in
# a statement of its own (labelled is_patient and by scope), then ``notification_consent(row)``.
NOTIFICATION_CONSENT_COLUMNS = (
    exists().where(cast(Table, Patient.__table__).c.user_id == bindparam("user_id")).label("is_patient"),
    *(_newest_status(scope) for scope in SCOPES),
)


def notification_consent(row: Any) -> NotificationConsent:
    return NotificationConsent(bool(row.is_patient), {scope: getattr(row, scope) for scope in SCOPES})


def require_messaging_consent(session: Session, *, patient_id: str) -> None:
    """Staff may not start a thread with a patient who declined, withdrew or never consented."""
    if not has_consent(session, patient_id=patient_id):
        raise ConsentRequired()


# -- the API's services ----------------------------------------------------------------------------


def _patient_for_staff(session: Session, actor: Actor, username: str, *, write: bool) -> User:
    return policy.patient_for_staff(session, actor, username, write=write)


def _records(session: Session, patient_id: str) -> list[ConsentRecord]:
    return list(session.scalars(select(ConsentRecord).where(ConsentRecord.patient_id == patient_id)
                                .order_by(ConsentRecord.recorded_at.desc(), ConsentRecord.id.desc())))


def _overview(session: Session, patient: User) -> schemas.ConsentOverview:
    rows = _records(session, patient.id)
    ids = {r.recorded_by for r in rows if r.recorded_by}
    names = {uid: name for uid, name in session.execute(select(User.id, User.username).where(User.id.in_(ids)))}

    def out(r: ConsentRecord) -> schemas.ConsentRecordOut:
        return schemas.ConsentRecordOut(id=r.id, scope=r.scope, status=r.status, terms_version=r.terms_version,
                                        method=r.method, recorded_by=names.get(r.recorded_by or ""),
                                        recorded_at=r.recorded_at)

    states = []
    for scope in SCOPES:
        newest = next((r for r in rows if r.scope == scope), None)
        states.append(schemas.ConsentState(
            scope=scope, status=newest.status if newest else "none",
            effective=allows(session, patient_id=patient.id, scope=scope),
            record=out(newest) if newest else None))
    return schemas.ConsentOverview(patient=patient.username, current=states, history=[out(r) for r in rows])


def _change(session: Session, actor: Actor, patient: User, data: schemas.ConsentChange, method: str) -> None:
    if data.status == "withdrawn" and not allows(session, patient_id=patient.id, scope=data.scope):
        raise NothingToWithdraw()
    record_consent(session, patient_id=patient.id, status=data.status, terms_version=data.terms_version,
                   method=method, recorded_by=actor.user_id, scope=data.scope, actor=actor)


def my_consent(session: Session, *, actor: Actor) -> schemas.ConsentOverview:
    if not actor.is_patient:
        raise NotFound()
    return _overview(session, session.get_one(User, actor.user_id))


def change_my_consent(session: Session, *, actor: Actor, data: schemas.ConsentChange) -> schemas.ConsentOverview:
    """The patient's own grant, decline or withdrawal in the portal."""
    if not actor.is_patient:
        raise NotFound()
    patient = session.get_one(User, actor.user_id)
    _change(session, actor, patient, data, "portal")
    return _overview(session, patient)


def patient_consent(session: Session, *, actor: Actor, username: str) -> schemas.ConsentOverview:
    patient = _patient_for_staff(session, actor, username, write=False)
    record(session, action="consent.record.view", actor=actor, subject_type="patient", subject_id=patient.id)
    return _overview(session, patient)


def change_patient_consent(session: Session, *, actor: Actor, username: str,
                           data: schemas.ConsentChange) -> schemas.ConsentOverview:
    """Staff recording the patient's decision on their behalf (a signed form, a phone call)."""
    patient = _patient_for_staff(session, actor, username, write=True)
    _change(session, actor, patient, data, "staff")
    return _overview(session, patient)


def patient_consent_fhir(session: Session, *, actor: Actor, username: str) -> dict[str, Any]:
    """The history as a FHIR R4 Bundle of Consent resources, validated by fhir.resources."""
    from lockbox.consent import fhir

    patient = _patient_for_staff(session, actor, username, write=False)
    rows = _records(session, patient.id)
    staff_ids = {r.recorded_by for r in rows if r.recorded_by and r.recorded_by != patient.id}
    rt = runtime_of(session)
    record(session, action="consent.record.export", actor=actor, subject_type="patient", subject_id=patient.id,
           count=len(rows))
    return fhir.bundle(rows, patient_id=patient.id, staff_ids=staff_ids, settings=rt.settings,
                       now=rt.clock.now())
