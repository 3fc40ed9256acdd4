"""Request and response bodies of the consent API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Scope = Literal["messaging", "email", "sms"]
Status = Literal["granted", "declined", "withdrawn"]


class ConsentChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope = "messaging"
    status: Status
    # An identifier, not prose: it is written to the audit trail.
    terms_version: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")


class ConsentRecordOut(BaseModel):
    id: int
    scope: str
    status: str
    terms_version: str
    method: str
    recorded_by: str | None = Field(description="username of whoever recorded it; null for a directory load")
    recorded_at: datetime


class ConsentState(BaseModel):
    scope: str
    status: Literal["granted", "declined", "withdrawn", "none"]
    effective: bool = Field(description="whether Lockbox may use this scope now (email and SMS also need "
                                        "messaging consent)")
    record: ConsentRecordOut | None


class ConsentOverview(BaseModel):
    patient: str
    current: list[ConsentState]
    history: list[ConsentRecordOut] = Field(description="every record, newest first")
