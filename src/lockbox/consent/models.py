"""Consent to secure messaging: an append-only history, the newest record is in force."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime


class ConsentRecord(Base):
    __tablename__ = "consent_records"

    # An increasing id orders records made within the same clock tick.
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(32), default="messaging")  # messaging | email | sms
    status: Mapped[str] = mapped_column(String(16))  # granted | declined | withdrawn
    terms_version: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))  # portal | staff | directory
    recorded_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


Index("ix_consent_records_patient_scope", ConsentRecord.patient_id, ConsentRecord.scope, ConsentRecord.recorded_at)
