"""The job table: notifications, escalation timers and EHR filing wait here until a worker runs them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime, new_id


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(64))
    # Identifiers only: a job row is as visible as an audit row and must not carry PHI.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Enqueueing twice under one key is a no-op (a retried request, a timer re-armed).
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # dead letter
    last_error: Mapped[str | None] = mapped_column(String(200))  # exception type and a PHI-free note


Index("ix_jobs_due", Job.done_at, Job.failed_at, Job.run_at)
