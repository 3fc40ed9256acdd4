"""Sign-in through the API: sessions and cookies, one answer for every bad credential, TOTP used once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.audit.models import AuditRow
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.identity.models import AuthSession, User
from lockbox.identity.sessions import hash_token
from tests.factories import PASSWORD, make_user
from tests.identity.helpers import (
    API,
    GENERIC_401,
    awaiting_enrolment,
    code_at,
    login,
    login_person,
    me,
    wrong_code,
)


def test_login_opens_a_session_with_a_bearer_token_and_a_strict_cookie(
    client: TestClient, db: Database, clock: FrozenClock, settings: Settings
) -> None:
    nurse = make_user(db, "nurse", sign_in=False)
    r = login_person(client, nurse, clock.now())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["idle_timeout_s"] == settings.idle_timeout_s
    assert datetime.fromisoformat(body["expires_at"]) == clock.now() + timedelta(seconds=settings.session_lifetime_s)

    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"lockbox_session={body['token']};")
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= {p.strip().lower() for p in cookie.split(";")}
    by_cookie = client.get(f"{API}/me")  # what the web UI sends
    assert by_cookie.json() == {"id": nurse.id, "username": nurse.username, "role": "nurse",
                                "display_name": nurse.username.title()}
    assert me(client, body["token"]).json()["id"] == nurse.id

    clock.advance(30)
    again = login_person(client, nurse, clock.now())
    assert again.status_code == 200 and again.json()["token"] != body["token"]


def test_every_bad_credential_gets_the_same_answer(client: TestClient, db: Database, clock: FrozenClock) -> None:
    now = clock.now()
    wrong_password, wrong_totp, deactivated = (make_user(db, sign_in=False) for _ in range(3))
    db.write_sync(lambda s: setattr(s.get(User, deactivated.id), "active", False))
    not_enrolled, _ = awaiting_enrolment(db)

    responses = [
        login(client, wrong_password.username, code_at(wrong_password.totp_secret, now), password="not-my-password-9"),
        login(client, wrong_totp.username, wrong_code(wrong_totp.totp_secret, now)),
        login(client, "no.such.person", "123456"),
        login_person(client, deactivated, now),
        login(client, not_enrolled.username, code_at(not_enrolled.totp_secret, now)),
    ]
    for r in responses:
        assert (r.status_code, r.json()) == (401, GENERIC_401)
        assert "set-cookie" not in r.headers


def test_a_totp_code_signs_in_only_once(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db, sign_in=False)
    now = clock.now()
    code = code_at(person.totp_secret, now)
    assert login(client, person.username, code).status_code == 200

    replay = login(client, person.username, code)
    assert (replay.status_code, replay.json()) == (401, GENERIC_401)
    # One step of drift either way is tolerated, but never a step at or before the last one used.
    assert login(client, person.username, code_at(person.totp_secret, now + timedelta(seconds=30))).status_code == 200
    assert login(client, person.username, code_at(person.totp_secret, now - timedelta(seconds=30))).status_code == 401
    assert login(client, person.username, code_at(person.totp_secret, now + timedelta(seconds=60))).status_code == 401


def test_tokens_are_stored_only_as_hashes(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db, sign_in=False)
    token = login_person(client, person, clock.now()).json()["token"]

    def _rows(session: Session) -> list[dict[str, Any]]:
        return [{c.name: getattr(a, c.key) for c in AuthSession.__table__.columns}
                for a in session.scalars(select(AuthSession))]

    rows = db.read_sync(_rows)
    assert [r["token_hash"] for r in rows] == [hash_token(token)]
    assert token not in json.dumps(rows, default=str)


def test_logins_are_audited_with_identifiers_only(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db, sign_in=False)
    now = clock.now()
    token = login_person(client, person, now).json()["token"]
    assert login(client, person.username, "000000", password="Wrong-Horse-Battery-1").status_code == 401
    assert login(client, "mallory.typed.this", "000000", password="Secret-Guess-77").status_code == 401

    def _rows(session: Session) -> list[dict[str, Any]]:
        return [{c.name: getattr(a, c.key) for c in AuditRow.__table__.columns}
                for a in session.scalars(select(AuditRow).order_by(AuditRow.seq))]

    rows = [r for r in db.read_sync(_rows) if r["action"].startswith("identity.login.")]
    session_id = db.read_sync(lambda s: s.scalar(select(AuthSession.id)))
    assert [(r["action"], r["outcome"], r["actor_id"], r["session_id"], r["subject_type"], r["subject_id"])
            for r in rows[:2]] == [
        ("identity.login.success", "success", person.id, session_id, "session", session_id),
        ("identity.login.failure", "failure", None, None, "user", person.id),
    ]
    assert rows[1]["details"]["reason"] == "bad_password"
    unknown = rows[2]
    assert (unknown["action"], unknown["subject_type"], unknown["details"]["reason"]) == (
        "identity.login.failure", "unknown_account", "unknown_user")
    assert len(rows) == 3

    dump = json.dumps(rows, default=str).lower()
    for secret in (person.username, "mallory.typed.this", "wrong-horse-battery-1", "secret-guess-77", PASSWORD, token):
        assert secret.lower() not in dump


def test_text_the_database_cannot_store_is_invalid_input(client: TestClient, db: Database) -> None:
    admin = make_user(db, "admin")
    assert admin.token
    nul_username = json.dumps({"username": "ann\x00", "password": PASSWORD, "totp": "123456"})
    lone_surrogate = '{"username": "ann", "password": "\\ud800\\ud800 password", "totp": "123456"}'
    for raw in (nul_username, lone_surrogate):
        r = client.post(f"{API}/auth/login", content=raw, headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["error"]) == (422, "invalid_input"), raw
    r = client.post(f"{API}/admin/users/%00/wipe", headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 422
