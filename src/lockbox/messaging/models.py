"""Threads, their participants, messages and attachments. Every subject, body and file is sealed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime, new_id


class Thread(Base):
    __tablename__ = "threads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))  # patient | staff | group
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    care_team_id: Mapped[str | None] = mapped_column(ForeignKey("care_teams.id"), index=True)
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id"), index=True)
    assignee_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_message_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    subject_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    # Envelope encryption: the thread's data key wrapped by key-encryption key `key_version`.
    data_key_wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    # Seals made with the data key; the SP 800-38D random-nonce limit is enforced against it.
    data_key_uses: Mapped[int] = mapped_column(Integer, default=0)


class Participant(Base):
    __tablename__ = "thread_participants"

    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    # member: takes part (and so may read); observer: read it through a pool, care team or break-glass,
    # which leaves receipts but grants nothing once that relationship ends.
    kind: Mapped[str] = mapped_column(String(16), default="member")
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_delivered_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_read_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("thread_id", "seq", name="uq_messages_thread_seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    # None: written by the clinic itself (an automatic reply), not by a person.
    sender_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16), default="message")  # message | auto_reply
    body_sealed: Mapped[bytes] = mapped_column(LargeBinary)


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    name_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    data_sealed: Mapped[bytes] = mapped_column(LargeBinary)


class Correspondent(Base):
    """Who has already written to whom: the misdelivery guard asks before a first message."""

    __tablename__ = "correspondents"

    sender_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    recipient: Mapped[str] = mapped_column(String(80), primary_key=True)  # user:<id> | pool:<id>
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)


Index("ix_threads_pool_status", Thread.pool_id, Thread.status)
