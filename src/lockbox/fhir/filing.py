"""A thread filed into the chart as FHIR R4 resources, in one transaction Bundle:

- a ``Communication`` per message (subject, sender, recipients, sent/received, ``inResponseTo`` the message
  before it, ``payload.contentString`` with the decrypted text, category and priority from the routing
  decision's topic and urgency, ``about`` the call-back's CommunicationRequest when there is one);
- a ``DocumentReference`` per attachment (the file inline), referenced from its message's payload;
- a ``CommunicationRequest`` per call-back task.

Every entry is a conditional create on an identifier Lockbox owns (``ifNoneExist``), and fullUrls are derived
from those identifiers, so filing again, after a lost answer or a crash, adds nothing already in the chart and
keeps the references between entries pointing at the existing resources.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.config import Settings
from lockbox.db.uow import runtime_of
from lockbox.fhir.models import FhirLink
from lockbox.fhir.validation import check_outgoing
from lockbox.identity.models import User
from lockbox.messaging.models import Attachment, Message, Participant, Thread
from lockbox.messaging.sealing import ThreadCipher
from lockbox.routing.models import CallbackTask, RoutingDecision

CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/communication-category"
PRIORITY = {"emergency": "stat", "urgent": "urgent", "routine": "routine"}
_NAMESPACE = uuid.UUID("5f0c2b43-3c2e-4b8e-9a53-6c6f636b626f")


class NotLinked(Exception):
    """The thread's patient has no linked FHIR Patient: nothing can be filed until a person resolves it."""

    def __init__(self, patient_id: str | None, status: str) -> None:
        super().__init__(status)
        self.patient_id = patient_id
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:  # as raised, from the writer process too
        return type(self), (self.patient_id, self.status)


@dataclass(frozen=True)
class Filing:
    bundle: dict[str, Any]
    last_seq: int
    communications: int


def identifier_system(settings: Settings, what: str) -> str:
    return f"{settings.fhir_identifier_system}:{what}"


def _full_url(system: str, value: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{system}|{value}')}"


def _entry(resource: dict[str, Any], system: str, value: str) -> dict[str, Any]:
    resource["identifier"] = [{"system": system, "value": value}]
    request = {"method": "POST", "url": resource["resourceType"], "ifNoneExist": f"identifier={system}|{value}"}
    return {"fullUrl": _full_url(system, value), "resource": resource, "request": request}


def _when(value: Any) -> str:
    return str(value.isoformat())


def build_thread_filing(session: Session, *, thread_id: str) -> Filing:
    """Read (in a read unit) and decrypt the thread, and build its transaction Bundle, validated."""
    rt = runtime_of(session)
    settings = rt.settings
    thread = session.get(Thread, thread_id)
    if thread is None:
        raise NotLinked(None, "thread_gone")
    if thread.patient_id is None:
        raise NotLinked(None, "not_a_patient_thread")
    links = {link.user_id: link for link in session.scalars(select(FhirLink).where(FhirLink.status == "linked"))}
    patient_link = links.get(thread.patient_id)
    if patient_link is None or patient_link.fhir_type != "Patient" or not patient_link.fhir_id:
        existing = session.get(FhirLink, thread.patient_id)
        raise NotLinked(thread.patient_id, existing.status if existing else "unmatched")
    patient_ref = {"reference": f"Patient/{patient_link.fhir_id}"}

    cipher = ThreadCipher.open(rt.keyring, thread.id, thread.key_version, thread.data_key_wrapped)
    subject_text = cipher.open_subject(thread.subject_sealed)
    messages = list(session.scalars(select(Message).where(Message.thread_id == thread.id).order_by(Message.seq)))
    participants = list(session.scalars(select(Participant).where(Participant.thread_id == thread.id)))
    people = {u.id: u for u in session.scalars(select(User).where(
        User.id.in_({p.user_id for p in participants} | {m.sender_id for m in messages if m.sender_id}
                    | {thread.patient_id} | ({thread.assignee_id} if thread.assignee_id else set()))))}
    decision = session.scalar(select(RoutingDecision).where(RoutingDecision.thread_id == thread.id)
                              .order_by(RoutingDecision.created_at.desc(), RoutingDecision.id.desc()).limit(1))
    urgency = decision.urgency if decision else ("emergency" if thread.emergency else
                                                 "urgent" if thread.urgent else "routine")
    topic = decision.topic if decision else "other"
    attachments: dict[str, list[Attachment]] = {}
    for att in session.scalars(select(Attachment).where(Attachment.thread_id == thread.id)):
        attachments.setdefault(att.message_id, []).append(att)
    callbacks = list(session.scalars(select(CallbackTask).where(CallbackTask.thread_id == thread.id)
                                     .order_by(CallbackTask.created_at)))

    def who(user_id: str | None) -> dict[str, Any]:
        if user_id is None:
            return {"display": settings.clinic_name[:200]}
        if user_id == thread.patient_id:
            return patient_ref
        link = links.get(user_id)
        if link is not None and link.fhir_type == "Practitioner" and link.fhir_id:
            return {"reference": f"Practitioner/{link.fhir_id}"}
        user = people.get(user_id)
        # Not matched to a Practitioner: a logical reference the EHR can resolve later, never a guess.
        return {"type": "Practitioner", "identifier": {"system": identifier_system(settings, "user"), "value": user_id},
                **({"display": user.display_name[:200]} if user else {})}

    category = [{"coding": [{"system": identifier_system(settings, "topic"), "code": topic}]}]
    if urgency == "emergency":
        category.append({"coding": [{"system": CATEGORY_SYSTEM, "code": "alert"}]})
    entries: list[dict[str, Any]] = []
    requests: list[str] = []
    for task in callbacks:
        system = identifier_system(settings, "callback")
        entry = _entry({
            "resourceType": "CommunicationRequest", "status": "completed" if task.completed_at else "active",
            "subject": patient_ref, "priority": "stat", "authoredOn": _when(task.created_at),
            "category": category, "occurrenceDateTime": _when(task.due_at),
            "reasonCode": [{"coding": [{"system": identifier_system(settings, "callback-reason"),
                                        "code": task.reason[:32]}]}],
            "payload": [{"contentString": "Call the patient back."}],
            "sender": {"display": settings.clinic_name[:200]},
        }, system, task.id)
        entries.append(entry)
        requests.append(entry["fullUrl"])

    member_ids = [p.user_id for p in participants if p.kind == "member"]
    if thread.assignee_id and thread.assignee_id not in member_ids:
        member_ids.append(thread.assignee_id)
    if thread.patient_id not in member_ids:
        member_ids.append(thread.patient_id)
    previous: str | None = None
    for m in messages:
        payload: list[dict[str, Any]] = [{"contentString": cipher.open_body(m.id, m.body_sealed)}]
        for att in attachments.get(m.id, []):
            system = identifier_system(settings, "attachment")
            doc = _entry({
                "resourceType": "DocumentReference", "status": "current", "subject": patient_ref,
                "date": _when(m.created_at),
                "content": [{"attachment": {"contentType": att.content_type, "size": att.size,
                                            "title": cipher.open_file_name(att.id, att.name_sealed)[:200],
                                            "data": base64.b64encode(cipher.open_file(att.id, att.data_sealed))
                                            .decode("ascii")}}],
            }, system, att.id)
            entries.append(doc)
            payload.append({"contentReference": {"reference": doc["fullUrl"]}})
        recipients = [rid for rid in member_ids if rid != m.sender_id]
        received = [p.last_read_at for p in participants
                    if p.user_id != m.sender_id and p.last_read_seq >= m.seq and p.last_read_at is not None]
        resource: dict[str, Any] = {
            "resourceType": "Communication", "status": "completed", "subject": patient_ref,
            "topic": {"text": subject_text[:500]}, "category": category,
            "priority": PRIORITY.get(urgency, "routine"),
            "sent": _when(m.created_at), "sender": who(m.sender_id),
            "recipient": [who(rid) for rid in recipients] or None,
            "payload": payload,
        }
        if received:
            resource["received"] = _when(min(received))
        if previous is not None:
            resource["inResponseTo"] = [{"reference": previous}]
        if requests:
            resource["about"] = [{"reference": url} for url in requests]
        resource = {k: v for k, v in resource.items() if v is not None}
        entry = _entry(resource, identifier_system(settings, "message"), m.id)
        entries.append(entry)
        previous = entry["fullUrl"]
    bundle = check_outgoing({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return Filing(bundle, messages[-1].seq if messages else 0, len(messages))
