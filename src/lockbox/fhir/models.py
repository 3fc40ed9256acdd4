"""Links between Lockbox accounts and the EHR's records, and what has been filed into the chart."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime


class FhirLink(Base):
    """A patient's FHIR Patient (matched by MRN) or a staff member's Practitioner (by NPI or another
    identifier). Only ``linked`` rows are used; every other status is a mismatch reported to a person."""

    __tablename__ = "fhir_links"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # patient | staff
    # Staff only: the identifier recorded for matching (an NPI is public, never PHI). Patients match by MRN.
    identifier: Mapped[str | None] = mapped_column(String(64))
    # linked | not_found | ambiguous | mismatch | inactive | no_identifier
    status: Mapped[str] = mapped_column(String(16), default="no_identifier")
    # Why a link was refused, as a code (birth_date_differs, 2_matches …); never the EHR's values.
    reason: Mapped[str | None] = mapped_column(String(64))
    fhir_type: Mapped[str | None] = mapped_column(String(32))  # Patient | Practitioner
    fhir_id: Mapped[str | None] = mapped_column(String(64), index=True)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class FhirFiling(Base):
    """A thread's filing into the EHR: requested (by a clinician or on close), then filed or blocked."""

    __tablename__ = "fhir_filings"

    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True)
    # queued | filed | blocked (needs a person: the patient is not linked) | failed (gave up retrying)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    requested_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    filed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Messages 1..filed_seq are in the chart; filing again adds only what came after.
    filed_seq: Mapped[int] = mapped_column(Integer, default=0)
    communications: Mapped[int] = mapped_column(Integer, default=0)
