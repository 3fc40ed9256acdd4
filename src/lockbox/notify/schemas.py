"""Request and response bodies of the notify API."""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

Status = Literal["queued", "sending", "sent", "suppressed", "failed"]


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quiet_from: time | None = Field(default=None, description="local time quiet hours start, e.g. 21:00")
    quiet_to: time | None = Field(default=None, description="local time they end, e.g. 07:30")
    timezone: str = Field(default="UTC", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+$")


# Quiet hours are wall-clock times in ``timezone``, kept to the minute without an offset: "21:00:00". JSON
# Schema's "time" format requires an offset, so the answer documents its own shape.
LocalTime = Annotated[time, WithJsonSchema({"type": "string", "pattern": r"^\d{2}:\d{2}:\d{2}$"})]


class PreferencesOut(BaseModel):
    quiet_from: LocalTime | None
    quiet_to: LocalTime | None
    timezone: str


class NotificationOut(BaseModel):
    id: str
    user_id: str
    username: str
    channel: str
    kind: str
    status: str
    reason: str | None
    created_at: datetime
    send_after: datetime
    sent_at: datetime | None
    attempts: int
    provider_message_id: str | None
