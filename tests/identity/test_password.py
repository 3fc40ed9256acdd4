"""Changing one's password: proof of the current credentials, the strength rules, and sign-out everywhere."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi.testclient import TestClient

from lockbox.clock import FrozenClock
from lockbox.db import Database
from tests.factories import PASSWORD, Person, make_user
from tests.identity.helpers import API, GENERIC_401, STRONG_PASSWORD, bearer, code_at, login, login_person, me


def _change(client: TestClient, token: str, person: Person, clock: FrozenClock, *, current: str = PASSWORD,
            new: str = STRONG_PASSWORD, totp: str | None = None) -> httpx.Response:
    body = {"current_password": current, "new_password": new,
            "totp": totp or code_at(person.totp_secret, clock.now())}
    return client.post(f"{API}/me/password", json=body, headers=bearer(token))


def test_a_new_password_signs_out_every_device(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db)
    assert person.token
    laptop = login_person(client, person, clock.now()).json()["token"]
    clock.advance(30)

    r = _change(client, laptop, person, clock)
    assert r.status_code == 204
    assert 'lockbox_session="";' in r.headers["set-cookie"]
    assert me(client, laptop).status_code == 401
    assert me(client, person.token).status_code == 401

    clock.advance(30)
    assert login_person(client, person, clock.now()).status_code == 401
    new = login(client, person.username, code_at(person.totp_secret, clock.now()), password=STRONG_PASSWORD)
    assert new.status_code == 200


def test_wrong_current_credentials_change_nothing(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db)
    assert person.token
    wrong_password = _change(client, person.token, person, clock, current="not-the-password")
    assert (wrong_password.status_code, wrong_password.json()) == (401, GENERIC_401)
    stale_code = code_at(person.totp_secret, clock.now() - timedelta(minutes=5))
    assert _change(client, person.token, person, clock, totp=stale_code).status_code == 401

    assert me(client, person.token).status_code == 200
    assert login_person(client, person, clock.now()).status_code == 200


def test_a_weak_new_password_is_refused(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db)
    assert person.token
    r = _change(client, person.token, person, clock, new="letmein1")
    assert r.status_code == 400 and r.json()["error"] == "weak_password" and "letmein1" not in r.text
    assert me(client, person.token).status_code == 200
