"""Notifications (one row per message to one user on one channel) and each user's quiet hours."""

from __future__ import annotations

from datetime import datetime, time

from sqlalchemy import ForeignKey, Index, Integer, String, Time
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime, new_id


class Notification(Base):
    """No text is stored: the PHI-free text is rebuilt from ``kind`` at send time, and the address is
    read from the user's account then, so this table holds no contact details either."""

    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))  # email | sms | pager
    kind: Mapped[str] = mapped_column(String(16))  # new_message | escalation | page | delivery_failed
    # queued -> sending -> sent; or suppressed (never sent) or failed (dead letter)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(100))  # why suppressed, deferred or failing; PHI-free
    # For coalescing only (one pending notification per user per thread); never shown to the recipient.
    thread_id: Mapped[str | None] = mapped_column(ForeignKey("threads.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    send_after: Mapped[datetime] = mapped_column(UTCDateTime)
    sending_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))


Index("ix_notifications_pending", Notification.user_id, Notification.thread_id, Notification.channel,
      Notification.status)
Index("ix_notifications_status", Notification.status, Notification.created_at)


class NotifyPreference(Base):
    """Quiet hours in the user's own time zone; pages ignore them."""

    __tablename__ = "notify_preferences"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    quiet_from: Mapped[time | None] = mapped_column(Time)
    quiet_to: Mapped[time | None] = mapped_column(Time)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
