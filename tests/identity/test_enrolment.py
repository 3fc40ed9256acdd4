"""Enrolment through the API: one-time expiring codes, password rules and the TOTP secret shown once."""

from __future__ import annotations

import pyotp
from fastapi.testclient import TestClient

from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.identity.exceptions import InvalidEnrolment
from tests.identity.helpers import (
    STRONG_PASSWORD,
    awaiting_enrolment,
    code_at,
    enrol,
    login,
    secret_of,
)

INVALID_ENROLMENT = {"error": "invalid_credentials", "detail": InvalidEnrolment.detail}


def test_enrolment_sets_password_and_totp_for_login(client: TestClient, db: Database, clock: FrozenClock,
                                                     settings: Settings) -> None:
    person, code = awaiting_enrolment(db)
    r = enrol(client, person.username, code)
    assert r.status_code == 200
    uri = r.json()["totp_uri"]
    assert uri.startswith("otpauth://totp/")
    totp = pyotp.parse_uri(uri)
    assert totp.issuer == settings.clinic_name and totp.name == person.username
    secret = secret_of(r)

    ok = login(client, person.username, code_at(secret, clock.now()), password=STRONG_PASSWORD)
    assert ok.status_code == 200, ok.text


def test_code_is_single_use(client: TestClient, db: Database) -> None:
    person, code = awaiting_enrolment(db)
    assert enrol(client, person.username, code).status_code == 200

    again = enrol(client, person.username, code, password="another-fine-passphrase-88")
    assert again.status_code == 401 and again.json() == INVALID_ENROLMENT


def test_expired_wrong_and_unknown_get_one_answer(client: TestClient, db: Database, clock: FrozenClock,
                                                  settings: Settings) -> None:
    person, code = awaiting_enrolment(db)
    wrong = enrol(client, person.username, "ABCD-EFGH-JKMN-PQRS")
    unknown = enrol(client, "nobody.here", code)
    clock.advance(settings.enrolment_code_ttl_s)
    expired = enrol(client, person.username, code)

    for r in (wrong, unknown, expired):
        assert r.status_code == 401 and r.json() == INVALID_ENROLMENT


def test_code_is_accepted_as_typed_from_paper(client: TestClient, db: Database) -> None:
    person, code = awaiting_enrolment(db)
    assert enrol(client, person.username, code.replace("-", " ").lower()).status_code == 200


def test_weak_passwords_are_refused_with_a_reason_and_the_code_kept(client: TestClient, db: Database) -> None:
    person, code = awaiting_enrolment(db)
    for weak, reason in [
        ("password123", "common"),
        ("Tr0ub4d", "at least 8 characters"),
        (person.username * 2, "easy to guess"),
    ]:
        r = enrol(client, person.username, code, password=weak)
        assert r.status_code == 400, weak
        body = r.json()
        assert body["error"] == "weak_password"
        assert reason in body["detail"]
        assert weak not in r.text

    assert enrol(client, person.username, code).status_code == 200


def test_long_passwords_are_kept_whole(client: TestClient, db: Database, clock: FrozenClock) -> None:
    long_password = "seven ravens fold maps under a quiet amber lighthouse near Oslo in 912"
    assert len(long_password) == 70
    person, code = awaiting_enrolment(db)
    secret = secret_of(enrol(client, person.username, code, password=long_password))

    truncated = login(client, person.username, code_at(secret, clock.now()), password=long_password[:69])
    assert truncated.status_code == 401
    whole = login(client, person.username, code_at(secret, clock.now()), password=long_password)
    assert whole.status_code == 200


def test_passwords_beyond_the_ceiling_are_refused(client: TestClient, db: Database) -> None:
    person, code = awaiting_enrolment(db)
    r = enrol(client, person.username, code, password="x" * 257)
    assert r.status_code == 422 and "x" * 257 not in r.text
