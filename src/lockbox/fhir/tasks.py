"""The fhir domain's background work, run by the job workers outside any transaction (``external=True``):
matching identities, filing threads. Each is idempotent: filing uses conditional creates, matching
overwrites a link with what the EHR says now.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from lockbox.db import Database
from lockbox.fhir import context, service
from lockbox.fhir.exceptions import FhirInvalidResource, FhirRejected
from lockbox.fhir.filing import NotLinked, build_thread_filing
from lockbox.fhir.matching import Outcome, decide_patient, decide_staff, find_patients, find_practitioners
from lockbox.fhir.models import FhirFiling
from lockbox.fhir.runtime import runtime_for
from lockbox.jobs.service import register

log = logging.getLogger(__name__)


def match_patient(db: Database, *, patient_id: str) -> Outcome | None:
    """Match one patient by MRN, store the link; a linked patient's context is fetched into the cache."""
    settings = db.runtime.settings
    facts = db.read_sync(service.patient_facts, patient_id=patient_id)
    if facts is None:
        return None
    mrn, birth_date, link = facts
    if link is not None and link.status == "mismatch" and link.reason in service.STICKY_REASONS:
        return Outcome(link.status, link.reason, link.fhir_type, link.fhir_id)
    rt = runtime_for(settings)
    found = rt.call(lambda c: find_patients(c, system=settings.fhir_mrn_system, mrn=mrn))
    linked_to = link.fhir_id if link is not None and link.status == "linked" else None
    outcome = decide_patient(found, birth_date=birth_date, linked_to=linked_to)
    db.write_sync(service.store_link, user_id=patient_id, kind="patient", outcome=outcome)
    if outcome.status == "linked" and outcome.fhir_id:
        context.refresh(rt, patient_id=patient_id, fhir_patient_id=outcome.fhir_id, now=db.runtime.clock.now())
    return outcome


def match_staff(db: Database, *, user_id: str, identifier: str, linked_to: str | None) -> Outcome:
    settings = db.runtime.settings
    rt = runtime_for(settings)
    found = rt.call(lambda c: find_practitioners(c, system=settings.fhir_staff_identifier_system, value=identifier))
    outcome = decide_staff(found, linked_to=linked_to)
    db.write_sync(service.store_link, user_id=user_id, kind="staff", outcome=outcome)
    return outcome


def match_everyone(db: Database) -> dict[str, int]:
    """Every staff member with an identifier, then every patient; returns how many ended in each status."""
    counts: dict[str, int] = {}
    for user_id, identifier, link in db.read_sync(service.staff_to_match):
        if link.status == "mismatch" and link.reason in service.STICKY_REASONS:
            counts["mismatch"] = counts.get("mismatch", 0) + 1
            continue
        outcome = match_staff(db, user_id=user_id, identifier=identifier,
                              linked_to=link.fhir_id if link.status == "linked" else None)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    for patient_id in db.read_sync(service.patients_to_match):
        result = match_patient(db, patient_id=patient_id)
        if result is not None:
            counts[result.status] = counts.get(result.status, 0) + 1
    return counts


def run_match_patient(payload: dict[str, Any], *, db: Database) -> None:
    match_patient(db, patient_id=str(payload["patient_id"]))


def file_thread(payload: dict[str, Any], *, db: Database) -> None:
    """Build the thread's transaction Bundle and POST it. An unreachable EHR raises (the job retries later);
    an unlinked patient or a refusal is recorded on the filing for a person, and the job ends."""
    thread_id = str(payload["thread_id"])
    rt = runtime_for(db.runtime.settings)
    try:
        filing = db.read_sync(build_thread_filing, thread_id=thread_id)
    except NotLinked as exc:
        if exc.patient_id is None:
            db.write_sync(service.mark_not_filed, thread_id=thread_id, status="blocked", reason=exc.status)
            return
        # Never matched yet (or matched long ago): ask the EHR now, then build again.
        outcome = match_patient(db, patient_id=exc.patient_id)
        if outcome is None or outcome.status != "linked":
            db.write_sync(service.mark_not_filed, thread_id=thread_id, status="blocked",
                          reason=f"patient_{outcome.status if outcome else 'gone'}")
            return
        filing = db.read_sync(build_thread_filing, thread_id=thread_id)
    except FhirInvalidResource:
        db.write_sync(service.mark_not_filed, thread_id=thread_id, status="failed", reason="invalid_resource")
        return
    try:
        rt.call(lambda c: c.transaction(filing.bundle))
    except FhirRejected as exc:
        log.warning("EHR refused the filing of thread %s: HTTP %s %s", thread_id, exc.http_status, exc.issues)
        db.write_sync(service.mark_not_filed, thread_id=thread_id, status="failed",
                      reason=f"rejected_{exc.http_status}")
        return
    db.write_sync(service.mark_filed, thread_id=thread_id, last_seq=filing.last_seq,
                  communications=filing.communications)


def filing_gave_up(session: Session, payload: dict[str, Any], error: str) -> None:
    """The outbox gave up (the EHR stayed unreachable through every retry): the filing is ``failed``, so a
    clinician sees it and may file again, rather than ``queued`` for ever."""
    filing = session.get(FhirFiling, str(payload["thread_id"]))
    if filing is None or filing.status != "queued":  # a later request already settled it
        return
    service.mark_not_filed(session, thread_id=filing.thread_id, status="failed",
                           reason=f"gave_up_{error}" if error.isidentifier() else "gave_up")


register(service.FILE_JOB, file_thread, external=True, on_dead=filing_gave_up)
register(service.MATCH_PATIENT_JOB, run_match_patient, external=True)
