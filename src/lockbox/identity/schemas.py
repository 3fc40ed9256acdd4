"""Request and response bodies of the identity API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from lockbox.identity.credentials import MAX_PASSWORD_LENGTH

# Printable: the name reaches SQL, and PostgreSQL refuses NUL. (Lone surrogates never get this far:
# the JSON parser refuses them.)
Username = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
Secret = Annotated[str, Field(max_length=MAX_PASSWORD_LENGTH)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrolIn(_In):
    username: Username
    enrolment_code: str = Field(min_length=1, max_length=64)
    # Too short is a strength rule (400 weak_password, with the reason); only the ceiling bounds the payload.
    password: Secret


class EnrolOut(BaseModel):
    totp_uri: str


class LoginIn(_In):
    username: Username
    password: Secret
    totp: str = Field(min_length=1, max_length=16)


class LoginOut(BaseModel):
    token: str
    expires_at: datetime
    idle_timeout_s: int


class MeOut(BaseModel):
    id: str
    username: str
    role: str
    display_name: str


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    device: str
    created_at: datetime
    last_seen_at: datetime
    current: bool


class PasswordChangeIn(_In):
    current_password: Secret
    new_password: Secret
    totp: str = Field(min_length=1, max_length=16)


class EnrolmentCodeOut(BaseModel):
    enrolment_code: str
