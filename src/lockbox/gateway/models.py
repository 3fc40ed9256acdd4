"""Gateway app passwords, deliveries to external recipients and the PHI-free emails that reach them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base, UTCDateTime, new_id


class GatewayPassword(Base):
    """What a staff member's mail client signs in to the gateway with: a TOTP code cannot be typed into
    a mail client, so each client gets its own random app password, revocable alone. Only its SHA-256
    is stored (it is 256 random bits, so a fast hash suffices, as for session tokens)."""

    __tablename__ = "gateway_passwords"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SecureDelivery(Base):
    """A secured email's thread as one external recipient reaches it: by an opaque link (hashed here),
    then a one-time code sent to their address, then a short access session (hashed too)."""

    __tablename__ = "secure_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    sender_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    # The recipient's address is personal data: sealed by the key provider, opened only to send to it.
    address_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    link_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    code_mac: Mapped[str | None] = mapped_column(String(100))
    code_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    code_failures: Mapped[int] = mapped_column(Integer, default=0)
    codes_sent: Mapped[int] = mapped_column(Integer, default=0)
    last_code_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    access_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    access_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SecureNotice(Base):
    """One PHI-free email to an external recipient (the link, or a code), delivered by a job like the
    notify outbox: queued -> sending -> sent, or failed; or superseded when the sender had the link sent
again (it no longer works). The link or code is sealed until it is sent."""

    __tablename__ = "secure_notices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("secure_deliveries.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # link | code
    status: Mapped[str] = mapped_column(String(16))
    secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(100))
    provider_message_id: Mapped[str | None] = mapped_column(String(200))


Index("ix_secure_notices_status", SecureNotice.status, SecureNotice.created_at)
