"""Sessions: idle logoff and absolute lifetime, logout, and each person's list of signed-in devices."""

from __future__ import annotations

from fastapi.testclient import TestClient

from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from tests.factories import Api, make_user
from tests.identity.helpers import API, bearer, login_person, me


def _settle(db: Database) -> None:
    # Activity is written back fire-and-forget; a write queued after it returns once it has landed.
    db.write_sync(lambda s: None)


def test_an_idle_session_ends(client: TestClient, db: Database, clock: FrozenClock, settings: Settings) -> None:
    person = make_user(db)
    assert person.token
    clock.advance(settings.idle_timeout_s - 1)
    assert me(client, person.token).status_code == 200
    _settle(db)
    clock.advance(settings.idle_timeout_s)

    r = me(client, person.token)
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"


def test_activity_keeps_a_session_open(client: TestClient, db: Database, clock: FrozenClock,
                                       settings: Settings) -> None:
    person = make_user(db)
    assert person.token
    for _ in range(3):
        clock.advance(settings.idle_timeout_s * 2 // 3)
        assert me(client, person.token).status_code == 200
        _settle(db)
    clock.advance(settings.idle_timeout_s)
    assert me(client, person.token).status_code == 401


def test_a_busy_session_still_ends_at_its_absolute_lifetime(
    client: TestClient, db: Database, clock: FrozenClock, settings: Settings
) -> None:
    settings.session_lifetime_s = 2 * settings.idle_timeout_s
    token = login_person(client, make_user(db, sign_in=False), clock.now()).json()["token"]
    step = settings.idle_timeout_s // 2
    for _ in range(3):
        clock.advance(step)
        assert me(client, token).status_code == 200
        _settle(db)
    clock.advance(step)  # a lifetime since sign-in, half an idle timeout since the last request
    assert me(client, token).status_code == 401


def test_logout_ends_this_session_only_and_clears_the_cookie(client: TestClient, db: Database,
                                                              clock: FrozenClock) -> None:
    person = make_user(db)
    assert person.token
    token = login_person(client, person, clock.now()).json()["token"]

    r = client.post(f"{API}/auth/logout")  # signed in by the cookie, as the web UI is
    assert r.status_code == 204
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith('lockbox_session="";') and "max-age=0" in cookie
    assert me(client, token).status_code == 401
    assert me(client, person.token).status_code == 200


def test_people_see_and_revoke_their_own_devices(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db)
    other = make_user(db)
    assert person.token and other.token
    laptop = login_person(client, person, clock.now(), headers={"User-Agent": "Laptop/1.0"}).json()["token"]
    client.cookies.clear()

    listed = client.get(f"{API}/me/sessions", headers=bearer(laptop)).json()
    assert sorted((s["device"], s["current"]) for s in listed) == [("Laptop/1.0", True), ("pytest", False)]
    assert set(listed[0]) == {"id", "device", "created_at", "last_seen_at", "current"}
    phone_id = next(s["id"] for s in listed if s["device"] == "pytest")
    others_id = Api(client, other).get("/me/sessions").json()[0]["id"]

    assert client.delete(f"{API}/me/sessions/{others_id}", headers=bearer(laptop)).status_code == 404
    assert me(client, other.token).status_code == 200
    assert client.delete(f"{API}/me/sessions/{phone_id}", headers=bearer(laptop)).status_code == 204
    assert me(client, person.token).status_code == 401
    assert client.delete(f"{API}/me/sessions/{phone_id}", headers=bearer(laptop)).status_code == 404
    assert [s["device"] for s in client.get(f"{API}/me/sessions", headers=bearer(laptop)).json()] == ["Laptop/1.0"]


def test_me_requires_a_session(client: TestClient) -> None:
    assert client.get(f"{API}/me").status_code == 401
    assert client.get(f"{API}/me", headers=bearer("not-a-token")).status_code == 401
