"""Bodies of the fhir API and the rows of its CLI reports."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class FilingOut(BaseModel):
    thread_id: str
    # not_filed | queued | filed | blocked (the patient is not linked to the EHR) | failed (the EHR refused it)
    status: str
    reason: str | None = None
    requested_at: datetime | None = None
    filed_at: datetime | None = None
    filed_messages: int = 0
    communications: int = 0


class LinkOut(BaseModel):
    user_id: str
    username: str
    kind: str  # patient | staff
    # linked | unmatched | not_found | ambiguous | mismatch | inactive | no_identifier
    status: str
    reason: str | None = None
    fhir_type: str | None = None
    fhir_id: str | None = None
    checked_at: datetime | None = None
