"""Notifications for new messages: queued in the sender's unit of work, delivered by workers."""

from __future__ import annotations

from sqlalchemy.orm import Session


def message_sent(session: Session, *, thread_id: str, message_id: str, sender_id: str | None,
                 recipient_ids: list[str]) -> None:
    """Called by messaging inside the unit that stores a message, for everyone it was pushed to
    except the sender. Nothing is notified yet: the notify domain fills this in."""
