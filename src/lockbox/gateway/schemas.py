"""Request and response bodies of the gateway API, and what the external recipient's pages show."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(default="", max_length=64, pattern=r"^[\w .,()@+-]*$",
                       description="Which mail client this is for, e.g. 'Outlook on the clinic laptop'")


class PasswordOut(BaseModel):
    id: str
    label: str
    created_at: datetime
    last_used_at: datetime | None


class PasswordCreated(PasswordOut):
    """Shown once: only a hash is kept."""

    username: str
    password: str
    smtp_host: str
    smtp_port: int
    starttls: bool


class LinkState(BaseModel):
    code_pending: bool
    expires_at: datetime


class ExternalFile(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int


class ExternalMessage(BaseModel):
    seq: int
    created_at: datetime
    mine: bool
    sender: str
    body: str
    files: list[ExternalFile]


class ExternalThread(BaseModel):
    subject: str
    clinic: str
    messages: list[ExternalMessage]
    csrf: str


class DeliveryOut(BaseModel):
    """One external recipient of a thread, as staff see it: never the full address."""

    id: str
    recipient: str = Field(description="The address, masked: 'fr***@partner.example'")
    link_status: Literal["queued", "sent", "failed"] = Field(
        description="The latest link email: queued (or being retried), sent, or failed for good")
    link_failure: str | None = Field(description="Why it failed, as a class ('SMTP 550', 'ConnectionRefusedError'), "
                                     "never the mail server's text")
    link_sent_at: datetime | None
    created_at: datetime
    expires_at: datetime
    expired: bool
    verified_at: datetime | None = Field(description="When the recipient last opened the message with a code")
    codes_sent: int = Field(description="One-time codes sent for the current link")
    resends: int
    can_resend: bool
