"""The admin's account actions: remote wipe, deactivation and a new enrolment code; hidden from others."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lockbox.clock import FrozenClock
from lockbox.db import Database
from tests.factories import Api, make_user
from tests.identity.helpers import GENERIC_401, STRONG_PASSWORD, code_at, enrol, login, login_person, me, secret_of

ACTIONS = ["wipe", "deactivate", "enrolment-code"]


def test_remote_wipe_ends_every_session_and_tells_clients_to_erase(
    client: TestClient, db: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended: list[tuple[list[str], bool]] = []
    monkeypatch.setattr(db.runtime, "end_sessions", lambda ids, wipe: ended.append((sorted(ids), wipe)))
    admin = Api(client, make_user(db, "admin"))
    person = make_user(db)
    bystander = make_user(db)
    assert person.token and bystander.token
    phone = login_person(client, person, clock.now()).json()["token"]

    assert admin.post(f"/admin/users/{person.id}/wipe").status_code == 204
    assert me(client, person.token).status_code == 401 and me(client, phone).status_code == 401
    assert me(client, bystander.token).status_code == 200
    assert [(len(ids), wipe) for ids, wipe in ended] == [(2, True)]
    clock.advance(30)
    assert login_person(client, person, clock.now()).status_code == 200  # a wipe is not a lockout


def test_deactivation_ends_sessions_and_sign_in(client: TestClient, db: Database, clock: FrozenClock) -> None:
    admin = Api(client, make_user(db, "admin"))
    person = make_user(db)
    assert person.token

    assert admin.post(f"/admin/users/{person.id}/deactivate").status_code == 204
    assert me(client, person.token).status_code == 401
    r = login_person(client, person, clock.now())
    assert (r.status_code, r.json()) == (401, GENERIC_401)


def test_a_new_enrolment_code_replaces_the_old_credentials(client: TestClient, db: Database,
                                                           clock: FrozenClock) -> None:
    admin = Api(client, make_user(db, "admin"))
    person = make_user(db)
    assert person.token

    r = admin.post(f"/admin/users/{person.id}/enrolment-code")
    assert r.status_code == 200
    assert me(client, person.token).status_code == 401
    assert login_person(client, person, clock.now()).status_code == 401

    secret = secret_of(enrol(client, person.username, r.json()["enrolment_code"]))
    assert secret != person.totp_secret
    assert login(client, person.username, code_at(secret, clock.now()), password=STRONG_PASSWORD).status_code == 200


@pytest.mark.parametrize("role", ["physician", "compliance", "patient"])
def test_admin_actions_do_not_exist_for_other_roles(client: TestClient, db: Database, role: str) -> None:
    caller = Api(client, make_user(db, role))
    target = make_user(db)
    assert target.token
    for action in ACTIONS:
        r = caller.post(f"/admin/users/{target.id}/{action}")
        assert (r.status_code, r.json()["error"]) == (404, "not_found"), action
    assert me(client, target.token).status_code == 200


def test_unknown_users_are_not_found(client: TestClient, db: Database) -> None:
    admin = Api(client, make_user(db, "admin"))
    for action in ACTIONS:
        assert admin.post(f"/admin/users/{'0' * 32}/{action}").status_code == 404
