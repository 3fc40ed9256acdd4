"""Shared steps for the identity tests: accounts awaiting enrolment, and sign-in through the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pyotp
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lockbox.db import Database
from lockbox.errors import InvalidCredentials
from lockbox.identity.enrolment import issue_enrolment_code
from lockbox.identity.models import User
from tests.factories import PASSWORD, Person, make_user

API = "/api/v1"
GENERIC_401 = {"error": "invalid_credentials", "detail": InvalidCredentials.detail}
STRONG_PASSWORD = "violet-harbour-cinnamon-71-ledger"


def awaiting_enrolment(db: Database, role: str = "patient") -> tuple[Person, str]:
    """A directory account with no password or TOTP yet, and its one-time enrolment code."""
    person = make_user(db, role, sign_in=False)

    def _do(session: Session) -> str:
        user = session.get(User, person.id)
        assert user is not None
        user.password_hash = None
        user.totp_secret_sealed = None
        user.enrolled_at = None
        return issue_enrolment_code(session, user=user)

    return person, db.write_sync(_do)


def enrol(client: TestClient, username: str, code: str, password: str = STRONG_PASSWORD) -> httpx.Response:
    return client.post(f"{API}/auth/enrol", json={"username": username, "enrolment_code": code, "password": password})


def secret_of(enrol_response: httpx.Response) -> str:
    assert enrol_response.status_code == 200, enrol_response.text
    totp = pyotp.parse_uri(enrol_response.json()["totp_uri"])
    assert isinstance(totp, pyotp.TOTP)
    return totp.secret


def code_at(secret: str, now: datetime) -> str:
    return pyotp.TOTP(secret).at(now)


def login(client: TestClient, username: str, totp: str, password: str = PASSWORD, **kw: Any) -> httpx.Response:
    return client.post(f"{API}/auth/login", json={"username": username, "password": password, "totp": totp}, **kw)


def login_person(client: TestClient, person: Person, now: datetime, **kw: Any) -> httpx.Response:
    return login(client, person.username, code_at(person.totp_secret, now), **kw)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def me(client: TestClient, token: str) -> httpx.Response:
    # Cookies from earlier logins would stand in for a missing or stale token; send the bearer alone.
    client.cookies.clear()
    return client.get(f"{API}/me", headers=bearer(token))


def wrong_code(secret: str, now: datetime) -> str:
    """A well-formed code that is valid for none of the steps around ``now``."""
    totp = pyotp.TOTP(secret)
    valid = {totp.at(now.timestamp() + drift) for drift in (-30, 0, 30)}
    return next(c for c in (f"{n:06d}" for n in range(1000)) if c not in valid)
