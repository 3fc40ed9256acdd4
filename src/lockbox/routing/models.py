"""Routing decisions: where each patient message went, by which rule and why (no PHI in the why)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime, new_id


class RoutingDecision(Base):
    __tablename__ = "routing_decisions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    urgency: Mapped[str] = mapped_column(String(16))
    topic: Mapped[str] = mapped_column(String(32))
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id"))
    assignee_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    rule: Mapped[str] = mapped_column(String(100))
    explanation: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
