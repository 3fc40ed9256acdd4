"""Request and response shapes of the routing API: assignment, call-backs, duty, decision history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockbox.messaging.schemas import Routing


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=64, description="Username of the colleague taking the thread")


class Assignment(BaseModel):
    thread_id: str
    pool: str | None
    assignee: str | None = Field(description="Username of the assignee, None when in the queue")


class CallbackOut(BaseModel):
    id: str
    thread_id: str
    created_at: datetime
    due_at: datetime
    completed_at: datetime | None


class DutyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    available: bool


class DutyOut(BaseModel):
    available: bool = Field(description="The staff member's own switch (off: out sick, in a procedure …)")
    clinic_open: bool = Field(description="Within the clinic hours of their location now")
    on_call: list[str] = Field(description="Pools they are on call for now")


class DecisionOut(Routing):
    """The contract's ``routing`` object, with what produced it."""

    id: str
    trigger: str
    phases: dict[str, Any]
    created_at: datetime


class WorkloadOut(BaseModel):
    user_id: str
    username: str
    open_threads: int
    weighted_load: int
    available: bool


class ClockOut(BaseModel):
    """A routed thread's response clock: what waits, until when, how far the ladder climbed, and when staff
    last acknowledged, answered and were escalated to."""

    thread_id: str
    priority: str
    rule: str
    sla: str
    waiting: bool = Field(description="A patient message waits for staff (not yet read, answered or claimed)")
    pending_since: datetime | None
    due_at: datetime | None
    step: int = Field(description="Escalation tiers notified for the current wait")
    escalations: int = Field(description="Escalations over the thread's life")
    acknowledged_at: datetime | None = Field(description="Last claim, transfer or call-back completion")
    answered_at: datetime | None = Field(description="When a staff message last answered a waiting patient message")
    escalated_at: datetime | None = Field(description="When the escalation ladder last climbed")

