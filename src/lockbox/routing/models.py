"""Routing's tables: each decision and its reasons (no PHI), each thread's SLA clock, call-back tasks and
the responders' duty status and fairness bookkeeping."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime, new_id


class RoutingDecision(Base):
    __tablename__ = "routing_decisions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    # None for decisions no message caused: a claim, a transfer, an off-duty reassignment.
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    urgency: Mapped[str] = mapped_column(String(16))
    topic: Mapped[str] = mapped_column(String(32))
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id"))
    assignee_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    rule: Mapped[str] = mapped_column(String(100))
    explanation: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # message | reply | claim | release | transfer | reassign
    trigger: Mapped[str] = mapped_column(String(16), default="message")
    # Each phase's result (filter, rules, balance, context): codes, ids and counts only.
    phases: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class RoutingState(Base):
    """A routed thread's response clock: which message waits for staff, until when, and how far the
    escalation ladder has climbed. ``generation`` changes whenever the clock is re-armed, so a timer
    job left over from an earlier wait recognises itself as stale."""

    __tablename__ = "routing_thread_state"

    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True)
    priority: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(100))
    sla: Mapped[str] = mapped_column(String(16))
    ladder: Mapped[list[str]] = mapped_column(JSON, default=list)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # The first patient message no staff member has read or answered yet; None when nothing waits.
    pending_seq: Mapped[int | None] = mapped_column(Integer)
    pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    step: Mapped[int] = mapped_column(Integer, default=0)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    # When a staff member's message last answered a waiting patient message (stamped when the clock settles),
    # and when the ladder last climbed.
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CallbackTask(Base):
    """An emergency's call-back: a nurse phones the patient; open until someone marks it done."""

    __tablename__ = "routing_callbacks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id"))
    reason: Mapped[str] = mapped_column(String(32), default="emergency")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))


class Responder(Base):
    """A staff member's availability switch (out sick, in a procedure) and when they were last given a
    thread, which breaks ties between equally loaded responders."""

    __tablename__ = "routing_responders"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    last_assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

