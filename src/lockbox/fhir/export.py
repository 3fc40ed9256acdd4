"""Compliance exports as FHIR R4: the audit trail as AuditEvent resources (shaped after IHE Basic Audit Log
Patterns where an entry fits one: REST-style reads/creates/updates/deletes, user authentication, export) and
consent records as Consent resources (built by lockbox.consent.fhir), written as NDJSON in the Bulk Data
style (one resource per line, one file per type) or pushed to the EHR in transaction Bundles.

Like the audit rows they come from, AuditEvents carry identifiers only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.audit import repository
from lockbox.audit.models import AuditRow
from lockbox.config import Settings
from lockbox.consent import fhir as consent_fhir
from lockbox.consent.models import ConsentRecord
from lockbox.db.uow import runtime_of
from lockbox.fhir.filing import identifier_system
from lockbox.fhir.models import FhirLink
from lockbox.fhir.validation import check_outgoing
from lockbox.identity.models import User
from lockbox.identity.roles import Role

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"

_READ = {"view", "read", "download", "search", "list"}
_CREATE = {"send", "upload", "create", "open", "raise", "record", "enrol", "grant", "page", "file", "load"}
_UPDATE = {"update", "change", "flag", "close", "claim", "release", "transfer", "assign", "acknowledge", "rotate",
           "reassign", "escalate", "withdraw", "link", "revoke"}
_DELETE = {"purge", "delete", "destroy", "expire"}


def _event_type(action: str) -> tuple[dict[str, str], list[dict[str, str]], str]:
    """(type, subtypes, FHIR action code) for a Lockbox action ``domain.subject.verb``."""
    domain, _, rest = action.partition(".")
    verb = rest.rsplit(".", 1)[-1]
    if domain == "identity" and ("login" in rest or "logout" in rest or rest.startswith("mfa")):
        sub = {"system": DCM, "code": "110123", "display": "Logout"} if "logout" in rest else \
            {"system": DCM, "code": "110122", "display": "Login"}
        return {"system": DCM, "code": "110114", "display": "User Authentication"}, [sub], "E"
    if verb == "export":
        return {"system": DCM, "code": "110106", "display": "Export"}, [], "R"
    for verbs, code, fhir_action in ((_READ, "read", "R"), (_CREATE, "create", "C"), (_UPDATE, "update", "U"),
                                     (_DELETE, "delete", "D")):
        if verb in verbs:
            return {"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}, \
                [{"system": RESTFUL, "code": code}], fhir_action
    return {"system": DCM, "code": "110100", "display": "Application Activity"}, [], "E"


def audit_event(row: AuditRow, *, settings: Settings, patients: dict[str, str | None]) -> dict[str, Any]:
    """One audit row as an AuditEvent; ``patients`` maps patient user ids to linked FHIR Patient ids."""
    kind, subtypes, fhir_action = _event_type(row.action)
    user_system = identifier_system(settings, "user")
    agent: dict[str, Any] = {"requestor": True}
    if row.actor_id:
        agent["who"] = {"identifier": {"system": user_system, "value": row.actor_id}}
    else:
        agent["who"] = {"display": "Lockbox"}
    entities: list[dict[str, Any]] = []
    if row.subject_id:
        if row.subject_id in patients:  # a patient's account: BALP's patient entity
            fhir_patient = patients[row.subject_id]
            what = {"reference": f"Patient/{fhir_patient}"} if fhir_patient else \
                {"identifier": {"system": user_system, "value": row.subject_id}}
            entities.append({"what": what, "type": {"system": ENTITY_TYPE, "code": "1"},
                             "role": {"system": ENTITY_ROLE, "code": "1"}})
        else:
            entities.append({
                "what": {"identifier": {"system": identifier_system(settings, str(row.subject_type or "object")),
                                        "value": str(row.subject_id)}},
                "type": {"system": ENTITY_TYPE, "code": "2"}})
    details = [{"type": str(k), "valueString": str(v)} for k, v in sorted((row.details or {}).items())
               if v is not None and not isinstance(v, list | dict)][:20]
    entities.append({
        "what": {"identifier": {"system": identifier_system(settings, "audit-row"), "value": str(row.seq)}},
        "type": {"system": ENTITY_TYPE, "code": "2"},
        "detail": [{"type": "hash", "valueString": row.hash}, {"type": "prev_hash", "valueString": row.prev_hash},
                   *details]})
    event = {
        "resourceType": "AuditEvent",
        # The row's hash: unique, stable across exports, so pushing again updates instead of duplicating.
        "id": row.hash,
        "type": kind,
        "subtype": [*subtypes, {"system": identifier_system(settings, "audit-action"), "code": row.action}],
        "action": fhir_action,
        "recorded": row.at.isoformat(),
        "outcome": "0" if row.outcome == "success" else "4",
        "agent": [agent],
        "source": {"site": settings.clinic_name[:200], "observer": {"display": "Lockbox"},
                   "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
        "entity": entities,
    }
    return check_outgoing(event)


def _patient_links(session: Session) -> dict[str, str | None]:
    """Every patient's user id -> linked FHIR Patient id (None when not linked)."""
    linked = {uid: fid for uid, fid in session.execute(select(FhirLink.user_id, FhirLink.fhir_id).where(
        FhirLink.kind == "patient", FhirLink.status == "linked"))}
    return {uid: linked.get(uid) for uid in session.scalars(select(User.id).where(User.role == Role.patient))}


def audit_events(session: Session, *, since: datetime | None = None,
                 until: datetime | None = None) -> Iterator[dict[str, Any]]:
    settings = runtime_of(session).settings
    patients = _patient_links(session)
    for row in repository.stream(session, since=since, until=until):
        yield audit_event(row, settings=settings, patients=patients)


def consents(session: Session) -> Iterator[dict[str, Any]]:
    """Every consent record as a Consent, the one in force per patient and scope marked active."""
    settings = runtime_of(session).settings
    patients = _patient_links(session)
    staff = set(session.scalars(select(User.id).where(User.role != Role.patient)))
    seen: set[tuple[str, str]] = set()
    rows = session.scalars(select(ConsentRecord).order_by(ConsentRecord.patient_id, ConsentRecord.recorded_at.desc(),
                                                          ConsentRecord.id.desc()))
    for rec in rows:
        key = (rec.patient_id, rec.scope)
        in_force = key not in seen
        seen.add(key)
        doc: dict[str, Any] = consent_fhir.resource(rec, in_force=in_force, patient_id=rec.patient_id,
                                                    staff_ids=staff, settings=settings
                                                    ).model_dump(mode="json", exclude_none=True)
        fhir_patient = patients.get(rec.patient_id)
        doc["patient"] = {"reference": f"Patient/{fhir_patient}"} if fhir_patient else \
            {"identifier": {"system": identifier_system(settings, "user"), "value": rec.patient_id}}
        if rec.recorded_by:
            # Lockbox user ids mean nothing to the EHR: name the recorder by identifier.
            doc["performer"] = [{"identifier": {"system": identifier_system(settings, "user"),
                                                "value": rec.recorded_by}}]
        doc.pop("id", None)
        doc["identifier"] = [{"system": identifier_system(settings, "consent"), "value": str(rec.id)}]
        yield check_outgoing(doc)


def push_entries(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle that files ``resources`` idempotently: AuditEvents by id (update-as-create),
    anything with an identifier by conditional create."""
    entries = []
    for res in resources:
        if res["resourceType"] == "AuditEvent":
            entries.append({"fullUrl": f"AuditEvent/{res['id']}", "resource": res,
                            "request": {"method": "PUT", "url": f"AuditEvent/{res['id']}"}})
        else:
            ident = res["identifier"][0]
            entries.append({"resource": res, "request": {
                "method": "POST", "url": res["resourceType"],
                "ifNoneExist": f"identifier={ident['system']}|{ident['value']}"}})
    return check_outgoing({"resourceType": "Bundle", "type": "transaction", "entry": entries})
