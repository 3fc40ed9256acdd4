"""Legal holds over the API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HoldCreate(BaseModel):
    """Exactly one of ``patient`` (username) or ``thread`` (id)."""

    model_config = ConfigDict(extra="forbid")
    patient: str | None = Field(default=None, min_length=1, max_length=64)
    thread: str | None = Field(default=None, min_length=1, max_length=32)
    reason: str = Field(min_length=1, max_length=500)


class HoldOut(BaseModel):
    id: str
    subject_type: Literal["patient", "thread"]
    subject_id: str
    reason: str
    placed_by: str | None
    placed_at: datetime
    released_at: datetime | None


class PolicyOut(BaseModel):
    kind: str
    days: int
    after: Literal["closed", "last_message"]
