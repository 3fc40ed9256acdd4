"""Request and response shapes of the messaging API (ARCHITECTURE section 5)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _not_blank(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


class ThreadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000)
    patient: str | None = Field(default=None, max_length=64, description="Patient username (staff only)")
    to: list[str] = Field(default_factory=list, max_length=20, description="Usernames or pool ids")
    urgent: bool = False
    confirm_recipients: bool = False

    _subject = field_validator("subject")(_not_blank)
    _body = field_validator("body")(_not_blank)

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        out = []
        for name in value:
            name = name.strip()
            if not name or len(name) > 64:
                raise ValueError("each recipient is a username or pool id of 1 to 64 characters")
            out.append(name)
        return list(dict.fromkeys(out))


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: str = Field(min_length=1, max_length=20_000)

    _body = field_validator("body")(_not_blank)


class UrgentFlag(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urgent: bool


class BreakGlassRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=10, max_length=500)


class Routing(BaseModel):
    urgency: str
    topic: str
    pool: str | None
    assignee: str | None
    rule: str
    explanation: str


class ThreadCreated(BaseModel):
    id: str
    message_id: str
    routing: Routing | None = None
    auto_reply: str | None = None


class RecipientCard(BaseModel):
    """What the misdelivery guard shows before a first message, so the sender can check who it is."""

    kind: str  # user | pool
    id: str
    name: str
    display_name: str
    role: str | None = None
    birth_date: str | None = None
    mrn: str | None = None


class Person(BaseModel):
    id: str
    username: str
    display_name: str
    role: str


class AttachmentOut(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int


class MessageOut(BaseModel):
    id: str
    seq: int
    sender: Person
    created_at: datetime
    kind: str
    body: str
    attachments: list[AttachmentOut] = Field(default_factory=list)
    read_by: list[str] = Field(default_factory=list, description="user ids of others who read it")
    delivered_to: list[str] = Field(default_factory=list)
    auto_reply: str | None = Field(default=None, description="The clinic's automatic answer, when this message "
                                   "was an emergency")
    sender_label: str | None = Field(default=None, description="Who wrote it, when they have no account: "
                                     "\"External recipient\" for the answer of someone the email gateway "
                                     "wrote to (then ``sender`` is that placeholder, never the clinic)")


class ThreadSummary(BaseModel):
    id: str
    kind: str
    subject: str
    patient: Person | None
    pool: str | None
    assignee: str | None
    status: str
    urgent: bool
    emergency: bool
    created_at: datetime
    last_message_at: datetime
    message_count: int
    unread: int
    urgency: str | None = None
    topic: str | None = None
    callback_due: datetime | None = Field(default=None, description="An emergency call-back waits since then")


class ThreadDetail(ThreadSummary):
    participants: list[Person]
    messages: list[MessageOut]
    routing: Routing | None = None
