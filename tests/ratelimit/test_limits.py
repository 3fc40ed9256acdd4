"""Rate limits on sign-in, sending and uploads: per account, per client address, 429 with Retry-After,
shared through Redis, and out of the way when Redis is down (care comes first)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lockbox.app import create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from tests.factories import PASSWORD, Api, Person, make_pool, make_team, make_user
from tests.serverproc import free_port

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 100


def _client(settings: Settings, clock: FrozenClock, **limits: Any) -> TestClient:
    app = create_app(settings.model_copy(update=limits), clock=clock, migrate=False)
    return TestClient(app, base_url="https://testserver")


@pytest.fixture
def people(settings: Settings, clock: FrozenClock) -> dict[str, Person]:
    with _client(settings, clock) as client:
        db = client.app.state.lockbox.db  # type: ignore[attr-defined]
        make_team(db, "team-a")
        nurse = make_user(db, "nurse", care_teams=["team-a"])
        make_pool(db, "nurse-triage", ["nurse"], members=[nurse])
        return {"nurse": nurse, "patient": make_user(db, "patient", care_teams=["team-a"]),
                "other": make_user(db, "patient", care_teams=["team-a"])}


def _login(client: TestClient, who: Person, clock: FrozenClock, password: str = PASSWORD) -> httpx.Response:
    return client.post("/api/v1/auth/login",
                       json={"username": who.username, "password": password, "totp": who.totp(clock.now())})


def _send(client: TestClient, who: Person) -> httpx.Response:
    return Api(client, who).post("/threads", json={"subject": "Refill", "body": "Please refill my inhaler."})


def _assert_throttled(r: httpx.Response, window_s: int = 60) -> None:
    assert r.status_code == 429, r.text
    assert r.json() == {"error": "throttled", "detail": "Too many requests. Try again later."}
    assert 1 <= int(r.headers["retry-after"]) <= window_s


def test_login_is_limited_per_account(settings: Settings, clock: FrozenClock, people: dict[str, Person]) -> None:
    with _client(settings, clock, rate_login_account="3/minute") as client:
        # A second use of one TOTP code is refused (401), and counts like any attempt.
        assert [_login(client, people["nurse"], clock).status_code for _ in range(3)] == [200, 401, 401]
        _assert_throttled(_login(client, people["nurse"], clock))
        # The same spelling with other capitals is the same account; someone else is not held up.
        r = client.post("/api/v1/auth/login", json={"username": people["nurse"].username.upper(),
                                                    "password": PASSWORD, "totp": "000000"})
        _assert_throttled(r)
        assert _login(client, people["patient"], clock).status_code == 200


def test_login_is_limited_per_address(settings: Settings, clock: FrozenClock, people: dict[str, Person]) -> None:
    with _client(settings, clock, rate_login_address="2/minute") as client:
        assert _login(client, people["nurse"], clock).status_code == 200
        assert _login(client, people["patient"], clock, password="wrong-password").status_code == 401
        _assert_throttled(_login(client, people["other"], clock))


def test_sending_is_limited_per_account_and_a_refused_send_stores_nothing(
    settings: Settings, clock: FrozenClock, people: dict[str, Person]
) -> None:
    with _client(settings, clock, rate_send_account="2/minute") as client:
        tid = _send(client, people["patient"]).json()["id"]
        assert Api(client, people["patient"]).post(f"/threads/{tid}/messages", json={"body": "Also"}).status_code == 201
        _assert_throttled(Api(client, people["patient"]).post(f"/threads/{tid}/messages", json={"body": "Again"}))
        _assert_throttled(_send(client, people["patient"]))
        assert len(Api(client, people["nurse"]).get(f"/threads/{tid}").json()["messages"]) == 2
        assert Api(client, people["nurse"]).post(f"/threads/{tid}/messages", json={"body": "On it"}).status_code == 201


def test_sending_is_limited_per_address(settings: Settings, clock: FrozenClock, people: dict[str, Person]) -> None:
    with _client(settings, clock, rate_send_address="2/minute") as client:
        assert _send(client, people["patient"]).status_code == 201
        assert _send(client, people["other"]).status_code == 201
        _assert_throttled(_send(client, people["nurse"]))


def test_uploads_are_limited_per_account(settings: Settings, clock: FrozenClock, people: dict[str, Person]) -> None:
    with _client(settings, clock, rate_upload_account="1/minute") as client:
        tid = _send(client, people["patient"]).json()["id"]
        api = Api(client, people["patient"])
        assert api.post(f"/threads/{tid}/attachments", files={"file": ("a.png", PNG, "image/png")}).status_code == 201
        _assert_throttled(api.post(f"/threads/{tid}/attachments", files={"file": ("b.png", PNG, "image/png")}))
        # Uploads have their own budget: writing still works.
        assert api.post(f"/threads/{tid}/messages", json={"body": "Photo above"}).status_code == 201


def test_unauthenticated_requests_still_get_401(settings: Settings, clock: FrozenClock) -> None:
    with _client(settings, clock) as client:
        r = client.post("/api/v1/threads", json={"subject": "x", "body": "y"},
                        headers={"Authorization": "Bearer not-a-session"})
        assert r.status_code == 401


def test_limits_are_shared_by_processes_through_redis(
    settings: Settings, clock: FrozenClock, people: dict[str, Person], redis_url: str, redis_prefix: str
) -> None:
    shared = {"redis_url": redis_url, "redis_prefix": redis_prefix, "rate_send_account": "3/minute"}
    with _client(settings, clock, **shared) as one, _client(settings, clock, **shared) as two:
        statuses = [_send(c, people["patient"]).status_code for c in (one, two, one)]
        assert statuses == [201, 201, 201]
        _assert_throttled(_send(two, people["patient"]))
        _assert_throttled(_send(one, people["patient"]))


def test_sending_goes_on_when_redis_is_down(settings: Settings, clock: FrozenClock,
                                            people: dict[str, Person]) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    with _client(settings, clock, redis_url=down, rate_send_account="1/minute") as client:
        assert [_send(client, people["patient"]).status_code for _ in range(3)] == [201] * 3


def test_limits_can_be_turned_off(settings: Settings, clock: FrozenClock, people: dict[str, Person]) -> None:
    with _client(settings, clock, rate_limits_enabled=False, rate_send_account="1/minute") as client:
        assert [_send(client, people["patient"]).status_code for _ in range(3)] == [201] * 3


def _assert_page_throttled(r: httpx.Response) -> None:
    """Pages answer a browser in HTML, with the same status and Retry-After as the API."""
    assert r.status_code == 429, (r.status_code, dict(r.headers))
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert "text/html" in r.headers["content-type"]


def test_the_web_sign_in_page_shares_the_accounts_limit(settings: Settings, clock: FrozenClock,
                                                        people: dict[str, Person]) -> None:
    """The browser's form and the API are one door: attempts through either count for the account."""
    from tests.web.helpers import csrf_of

    with _client(settings, clock, rate_login_account="3/minute") as client:
        assert _login(client, people["nurse"], clock, password="wrong-password").status_code == 401

        def form_attempt() -> httpx.Response:
            token = csrf_of(client.get("/login").text)
            return client.post("/login", data={"username": people["nurse"].username.upper(), "password": "wrong",
                                               "totp": "000000", "csrf_token": token}, follow_redirects=False)

        assert form_attempt().status_code != 429
        assert form_attempt().status_code != 429
        _assert_page_throttled(form_attempt())
        _assert_throttled(_login(client, people["nurse"], clock))


def test_sending_from_the_web_page_counts_like_the_api(settings: Settings, clock: FrozenClock,
                                                       people: dict[str, Person]) -> None:
    from tests.web.helpers import csrf_of, use_session

    with _client(settings, clock, rate_send_account="1/minute") as client:
        use_session(client, people["patient"])
        page = client.get("/portal/new")
        assert page.status_code == 200
        data = {"subject": "Question", "body": "Can I move my appointment?", "csrf_token": csrf_of(page.text)}
        first = client.post("/portal/new", data=data, follow_redirects=False)
        assert first.status_code in (200, 303), first.text
        _assert_page_throttled(client.post("/portal/new", data=data, follow_redirects=False))
