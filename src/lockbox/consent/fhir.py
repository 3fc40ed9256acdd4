"""Consent records as FHIR R4 Consent resources. fhir.resources' R4B models validate them: R4B left
Consent exactly as R4 defined it (R5 redesigned it), so what validates here is R4.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent

from lockbox.config import Settings
from lockbox.consent.models import ConsentRecord

SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
CATEGORY_SYSTEM = "http://loinc.org"
ACTION_SYSTEM = "urn:lockbox:consent-scope"
_ACTION_TEXT = {"messaging": "Secure messaging", "email": "Notifications by email", "sms": "Notifications by SMS"}


def _status(rec: ConsentRecord, in_force: bool) -> str:
    if not in_force:
        return "inactive"  # superseded by a newer record for the same scope
    return {"granted": "active", "declined": "rejected", "withdrawn": "inactive"}[rec.status]


def resource(rec: ConsentRecord, *, in_force: bool, patient_id: str, staff_ids: set[str],
             settings: Settings) -> Consent:
    performer = None
    if rec.recorded_by:
        kind = "Practitioner" if rec.recorded_by in staff_ids else "Patient"
        performer = [{"reference": f"{kind}/{rec.recorded_by}"}]
    return Consent(
        id=f"consent-{rec.id}",
        status=_status(rec, in_force),
        scope={"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy", "display": "Privacy Consent"}]},
        category=[{"coding": [{"system": CATEGORY_SYSTEM, "code": "59284-0", "display": "Patient Consent"}]}],
        patient={"reference": f"Patient/{patient_id}"},
        dateTime=rec.recorded_at,
        performer=performer,
        organization=[{"display": settings.clinic_name}],
        policy=[{"uri": f"{settings.public_url.rstrip('/')}/terms/{rec.terms_version}"}],
        provision={
            "type": "permit" if rec.status == "granted" else "deny",
            "action": [{"coding": [{"system": ACTION_SYSTEM, "code": rec.scope}], "text": _ACTION_TEXT[rec.scope]}],
        },
        extension=[{"url": "urn:lockbox:consent-method", "valueCode": rec.method}],
    )


def bundle(rows: Iterable[ConsentRecord], *, patient_id: str, staff_ids: set[str], settings: Settings,
           now: datetime) -> dict[str, Any]:
    """A collection Bundle, newest first; the newest record per scope is the one in force."""
    seen: set[str] = set()
    entries = []
    for rec in rows:
        in_force = rec.scope not in seen
        seen.add(rec.scope)
        res = resource(rec, in_force=in_force, patient_id=patient_id, staff_ids=staff_ids, settings=settings)
        entries.append({"fullUrl": f"urn:lockbox:Consent/{res.id}", "resource": res})
    b = Bundle(type="collection", timestamp=now, entry=entries or None)
    out: dict[str, Any] = b.model_dump(mode="json", exclude_none=True)
    return out
