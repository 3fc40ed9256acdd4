"""What the compliance API returns: audit rows and alerts (identifiers only) and the verify report."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from lockbox.audit.verify import Kind, Report


class AuditRowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    at: datetime
    actor_id: str | None
    session_id: str | None
    action: str
    subject_type: str | None
    subject_id: str | None
    outcome: str
    details: dict[str, Any]


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    at: datetime
    actor_id: str | None
    subject_type: str | None
    subject_id: str | None
    details: dict[str, Any]
    acknowledged_at: datetime | None


class VerifyReportOut(BaseModel):
    ok: bool
    rows_checked: int
    last_seq: int
    checkpoints_checked: int
    head_seq: int | None
    first_bad_seq: int | None
    kind: Kind | None
    action: str | None
    detail: str | None
    summary: str

    @classmethod
    def of(cls, report: Report) -> VerifyReportOut:
        problem = report.problem
        return cls(ok=report.ok, rows_checked=report.rows_checked, last_seq=report.last_seq,
                   checkpoints_checked=report.checkpoints_checked, head_seq=report.head_seq,
                   first_bad_seq=report.first_bad_seq, kind=report.kind,
                   action=problem.action if problem else None, detail=problem.detail if problem else None,
                   summary=report.summary())
