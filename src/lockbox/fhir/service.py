"""The fhir domain's units of work: identity links and their report, filing requests and their outcome.

Network calls never happen here (services run inside the writer's transaction); tasks.py talks to the EHR
and records what it learnt through these functions.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.access import policy
from lockbox.access.actor import Actor
from lockbox.audit.service import record
from lockbox.db.uow import Runtime, after_commit, runtime_of
from lockbox.errors import Forbidden, InvalidInput, NotFound
from lockbox.fhir import schemas
from lockbox.fhir.exceptions import FhirNotConfigured
from lockbox.fhir.matching import Outcome
from lockbox.fhir.models import FhirFiling, FhirLink
from lockbox.identity.models import Patient, User
from lockbox.identity.roles import CLINICAL_ROLES, NO_CONTENT_ROLES, Role
from lockbox.jobs.service import enqueue

FILE_JOB = "fhir.file_thread"
MATCH_PATIENT_JOB = "fhir.match_patient"
# A moved identifier stays a mismatch until a person confirms a link: re-matching must not settle it.
STICKY_REASONS = {"mrn_moved", "identifier_moved"}


# -- identity links ------------------------------------------------------------------------------


def patient_facts(session: Session, *, patient_id: str) -> tuple[str, date, FhirLink | None] | None:
    """(MRN, birth date, current link) for matching; None when no such patient."""
    patient = session.get(Patient, patient_id)
    if patient is None:
        return None
    return patient.mrn, patient.birth_date, session.get(FhirLink, patient_id)


def _forget_context(session: Session, user_id: str) -> None:
    """A patient's link changed: the cached context belongs to the old record. Routing reads it in the process
    that runs units (the writer process, lockbox.db.writer_process): dropped there now (a drop for a unit that
    rolls back only costs a refetch), and in the server, whose match jobs warm its own, once committed."""
    runtime = runtime_of(session)
    if runtime.settings.fhir_base_url:
        _drop_context(runtime, user_id)
        after_commit(session, _drop_context, user_id)


def _drop_context(runtime: Runtime, user_id: str) -> None:
    from lockbox.fhir.runtime import runtime_for

    runtime_for(runtime.settings).cache.drop(user_id)


def store_link(session: Session, *, user_id: str, kind: str, outcome: Outcome) -> None:
    now = runtime_of(session).clock.now()
    link = session.get(FhirLink, user_id)
    if link is None:
        link = FhirLink(user_id=user_id, kind=kind)
        session.add(link)
    elif link.status == "mismatch" and link.reason in STICKY_REASONS:
        link.checked_at = now
        return
    changed = (link.status, link.fhir_id) != (outcome.status, outcome.fhir_id)
    link.status, link.reason = outcome.status, outcome.reason
    link.fhir_type, link.fhir_id, link.checked_at = outcome.fhir_type, outcome.fhir_id, now
    if changed:
        _forget_context(session, user_id)
        record(session, action="fhir.link.update", actor_id=None, subject_type="user", subject_id=user_id,
               status=outcome.status, reason=outcome.reason, fhir_id=outcome.fhir_id)


def set_staff_identifier(session: Session, *, username: str, identifier: str) -> str:
    """Record the identifier (an NPI by default) a staff member is matched by; they match on the next run."""
    identifier = identifier.strip()
    if not identifier or len(identifier) > 64 or not identifier.isprintable():
        raise InvalidInput("The identifier must be 1-64 printable characters.")
    user = session.scalar(select(User).where(User.username == username, User.role != Role.patient))
    if user is None:
        raise NotFound()
    link = session.get(FhirLink, user.id)
    if link is None:
        link = FhirLink(user_id=user.id, kind="staff", status="no_identifier")
        session.add(link)
    if link.identifier != identifier:
        link.identifier = identifier
        link.status, link.reason, link.fhir_type, link.fhir_id = "not_found", "not_checked_yet", None, None
        record(session, action="fhir.link.change", subject_type="user", subject_id=user.id)
    return user.id


def confirm_link(session: Session, *, username: str, fhir_id: str) -> None:
    """A person resolved a mismatch: link this account to this Patient or Practitioner id."""
    fhir_id = fhir_id.strip()
    if not fhir_id or len(fhir_id) > 64 or not all(c.isalnum() or c in "-." for c in fhir_id):
        raise InvalidInput("A FHIR id is 1-64 letters, digits, '-' or '.'.")
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound()
    is_patient = user.role == Role.patient
    link = session.get(FhirLink, user.id)
    if link is None:
        link = FhirLink(user_id=user.id, kind="patient" if is_patient else "staff")
        session.add(link)
    link.status, link.reason = "linked", "confirmed_by_person"
    link.fhir_type, link.fhir_id = ("Patient" if is_patient else "Practitioner"), fhir_id
    link.checked_at = runtime_of(session).clock.now()
    _forget_context(session, user.id)
    record(session, action="fhir.link.confirm", subject_type="user", subject_id=user.id, fhir_id=fhir_id)


def staff_to_match(session: Session) -> list[tuple[str, str, FhirLink]]:
    """(user id, identifier, link) of staff with a recorded identifier."""
    rows = session.execute(select(FhirLink.user_id, FhirLink.identifier, FhirLink)
                           .where(FhirLink.kind == "staff", FhirLink.identifier.is_not(None)))
    return [(uid, ident, link) for uid, ident, link in rows if ident]


def patients_to_match(session: Session) -> list[str]:
    return list(session.scalars(select(Patient.user_id).order_by(Patient.user_id)))


def link_report(session: Session, *, problems_only: bool = False) -> list[schemas.LinkOut]:
    rows = session.execute(select(User.id, User.username, User.role, FhirLink)
                           .outerjoin(FhirLink, FhirLink.user_id == User.id)
                           .where((User.role == Role.patient) | FhirLink.user_id.is_not(None))
                           .order_by(User.username))
    out = []
    for uid, username, role, link in rows:
        status = link.status if link else "unmatched"
        if problems_only and status == "linked":
            continue
        out.append(schemas.LinkOut(user_id=uid, username=username, kind="patient" if role == Role.patient else "staff",
                                   status=status, reason=link.reason if link else None,
                                   fhir_type=link.fhir_type if link else None, fhir_id=link.fhir_id if link else None,
                                   checked_at=link.checked_at if link else None))
    return out


def links_for(session: Session, *, actor: Actor, problems_only: bool = False) -> list[schemas.LinkOut]:
    if actor.role not in NO_CONTENT_ROLES:
        raise NotFound()
    return link_report(session, problems_only=problems_only)


# -- filing --------------------------------------------------------------------------------------


def queue_filing(session: Session, *, thread_id: str, requested_by: str | None, message_count: int) -> bool:
    """Queue the filing job (once per thread state: the same messages are never queued twice)."""
    now = runtime_of(session).clock.now()
    filing = session.get(FhirFiling, thread_id)
    key = f"{FILE_JOB}:{thread_id}:{message_count}"
    if filing is None:
        filing = FhirFiling(thread_id=thread_id, status="queued", requested_at=now, requested_by=requested_by,
                            filed_seq=0, communications=0)
        session.add(filing)
    elif filing.status == "filed" and filing.filed_seq >= message_count:
        return False
    else:
        if filing.status in ("blocked", "failed"):
            # The job that ended so is over but keeps its key: filing again (the link fixed, the EHR back)
            # needs a key of its own, or nothing would run.
            key += f":{now:%Y%m%d%H%M%S%f}"
        filing.status, filing.reason, filing.requested_at = "queued", None, now
        filing.requested_by = requested_by
    session.flush()
    queued = enqueue(session, kind=FILE_JOB, payload={"thread_id": thread_id}, dedupe_key=key, max_attempts=10)
    return queued is not None


def request_filing(session: Session, *, actor: Actor, thread_id: str) -> schemas.FilingOut:
    """A clinician files the thread into the patient's chart (now, through the outbox)."""
    settings = runtime_of(session).settings
    thread = policy.thread_for_write(session, actor, thread_id)
    policy.require_staff(actor)
    if actor.role not in CLINICAL_ROLES:
        raise Forbidden("Only clinicians file conversations into the chart.")
    if not settings.fhir_base_url or settings.fhir_filing == "off":
        raise FhirNotConfigured()
    if thread.patient_id is None:
        raise InvalidInput("Only a thread with a patient can be filed into a chart.")
    queue_filing(session, thread_id=thread.id, requested_by=actor.user_id, message_count=thread.message_count)
    record(session, action="fhir.thread.request", actor=actor, subject_type="thread", subject_id=thread.id)
    return _filing_out(session.get(FhirFiling, thread.id), thread.id)


def filing_status(session: Session, *, actor: Actor, thread_id: str) -> schemas.FilingOut:
    thread = policy.thread_for_read(session, actor, thread_id)
    policy.require_staff(actor)
    return _filing_out(session.get(FhirFiling, thread.id), thread.id)


def _filing_out(filing: FhirFiling | None, thread_id: str) -> schemas.FilingOut:
    if filing is None:
        return schemas.FilingOut(thread_id=thread_id, status="not_filed")
    return schemas.FilingOut(thread_id=thread_id, status=filing.status, reason=filing.reason,
                             requested_at=filing.requested_at, filed_at=filing.filed_at,
                             filed_messages=filing.filed_seq, communications=filing.communications)


def thread_closed(session: Session, *, thread_id: str, message_count: int, patient_id: str | None) -> None:
    """The close hook: with ``fhir_filing = "auto"``, a closed patient thread is filed."""
    settings = runtime_of(session).settings
    if settings.fhir_filing != "auto" or not settings.fhir_base_url or patient_id is None:
        return
    queue_filing(session, thread_id=thread_id, requested_by=None, message_count=message_count)


def mark_filed(session: Session, *, thread_id: str, last_seq: int, communications: int) -> None:
    filing = session.get(FhirFiling, thread_id)
    now = runtime_of(session).clock.now()
    if filing is None:
        filing = FhirFiling(thread_id=thread_id, requested_at=now)
        session.add(filing)
    filing.status, filing.reason, filing.filed_at = "filed", None, now
    filing.filed_seq = max(filing.filed_seq or 0, last_seq)
    filing.communications = communications
    record(session, action="fhir.thread.file", subject_type="thread", subject_id=thread_id, seq=last_seq)


def mark_not_filed(session: Session, *, thread_id: str, status: str, reason: str) -> None:
    """blocked (a person must act: the patient is not linked) or failed (the EHR refused the Bundle)."""
    filing = session.get(FhirFiling, thread_id)
    if filing is None:
        return
    filing.status, filing.reason = status, reason[:64]
    record(session, action="fhir.thread.file", subject_type="thread", subject_id=thread_id, outcome=status,
           reason=reason[:64])
