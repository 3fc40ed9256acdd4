"""Legal holds: a patient or a thread that retention must not purge while the hold stands."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime, new_id


class LegalHold(Base):
    __tablename__ = "legal_holds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # No foreign key on purpose: a hold names what must survive, and must itself survive anything.
    subject_type: Mapped[str] = mapped_column(String(16))  # patient | thread
    subject_id: Mapped[str] = mapped_column(String(32))
    # Free text (a matter number, a request), sealed like any text a person typed: it may name someone.
    reason_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    placed_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index("ix_legal_holds_subject", LegalHold.subject_type, LegalHold.subject_id, LegalHold.released_at)
