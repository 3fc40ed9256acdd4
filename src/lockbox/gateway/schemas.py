"""Request and response bodies of the gateway API, and what the external recipient's pages show."""

from __future__ import annotations

from datetime import datetime

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
