"""Throttling of failed sign-ins: per account, per client address, with a back-off that always ends."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from lockbox.audit.models import Alert
from lockbox.clock import FrozenClock
from lockbox.db import Database
from lockbox.identity import throttle
from lockbox.identity.models import AuthThrottle
from tests.factories import Api, make_user
from tests.identity.helpers import (
    GENERIC_401,
    STRONG_PASSWORD,
    code_at,
    enrol,
    login,
    login_person,
    secret_of,
)


def _fail(client: TestClient, username: str, times: int = 1) -> None:
    for _ in range(times):
        r = login(client, username, "000000", password="a-wrong-password")
        assert (r.status_code, r.json()) == (401, GENERIC_401)


def _seed(db: Database, key: str, policy: throttle.Policy, failures: int, clock: FrozenClock) -> None:
    """Failures counted without the API: each real attempt costs an argon2 verification."""
    db.write_sync(lambda s: [throttle.record_failure(s, key, policy, clock.now()) for _ in range(failures)])


@pytest.mark.parametrize(("failures", "lock_s"), [(1, 0), (4, 0), (5, 30), (6, 60), (7, 120), (9, 480), (10, 900),
                                                 (99, 900)])
def test_account_back_off_doubles_up_to_fifteen_minutes(failures: int, lock_s: int) -> None:
    assert throttle.ACCOUNT.lock_s(failures) == lock_s


def test_a_hundred_consecutive_failures_take_about_a_day() -> None:
    # NIST SP 800-63B's ceiling of 100 consecutive failures per account is reached only after this wait.
    waited = sum(throttle.ACCOUNT.lock_s(n) for n in range(1, 100))
    assert 22 * 3600 < waited < 24 * 3600
    assert throttle.ACCOUNT.suspend_after == 100 and throttle.ADDRESS.suspend_after is None


def test_five_failures_lock_the_account_even_against_the_right_credentials(
    client: TestClient, db: Database, clock: FrozenClock
) -> None:
    person = make_user(db, sign_in=False)
    _seed(db, throttle.account_key(person.id), throttle.ACCOUNT, 4, clock)
    _fail(client, person.username)  # judged (401, not 429): four did not lock; five does

    locked = login_person(client, person, clock.now())
    assert locked.status_code == 429 and locked.headers["retry-after"] == "30"
    assert locked.json()["error"] == "throttled"
    clock.advance(29)
    assert login_person(client, person, clock.now()).headers["retry-after"] == "1"
    clock.advance(1)
    assert login_person(client, person, clock.now()).status_code == 200

    alerts = db.read_sync(lambda s: [(a.kind, a.subject_id, a.details) for a in s.scalars(select(Alert))])
    assert alerts == [("failed_login_burst", person.id, {"scope": "account", "failures": 5, "suspended": False})]


def test_the_lock_doubles_and_a_success_clears_it(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db, sign_in=False)
    key = throttle.account_key(person.id)
    _seed(db, key, throttle.ACCOUNT, 5, clock)
    assert login_person(client, person, clock.now()).headers["retry-after"] == "30"
    clock.advance(30)
    _fail(client, person.username)  # the sixth failure is judged, then locks for longer
    assert login_person(client, person, clock.now()).headers["retry-after"] == "60"
    clock.advance(60)
    assert login_person(client, person, clock.now()).status_code == 200
    assert db.read_sync(lambda s: s.get(AuthThrottle, key)) is None


def test_unknown_usernames_are_throttled_alike(client: TestClient, clock: FrozenClock) -> None:
    _fail(client, "ghost.account", 5)
    r = login(client, "Ghost.Account", "000000", password="a-wrong-password")
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    clock.advance(30)
    _fail(client, "ghost.account")


def test_an_address_locks_after_twenty_failures_whoever_is_named(
    app: FastAPI, client: TestClient, db: Database, clock: FrozenClock
) -> None:
    person = make_user(db, sign_in=False)
    # Eighteen failures already counted for this address, each under another name (argon2 is slow).
    key = throttle.address_key("testclient")
    db.write_sync(lambda s: [throttle.record_failure(s, key, throttle.ADDRESS, clock.now()) for _ in range(18)])
    _fail(client, "someone.else")
    _fail(client, "someone.other")  # judged (401, not 429): nineteen did not lock; twenty does

    r = login_person(client, person, clock.now())
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    elsewhere = TestClient(app, base_url="https://testserver", client=("203.0.113.7", 40000))
    assert login_person(elsewhere, person, clock.now()).status_code == 200

    by_address = select(Alert).where(Alert.subject_type == "client_addr", Alert.subject_id == "testclient")
    alerts = db.read_sync(lambda s: [a.details for a in s.scalars(by_address)])
    assert alerts == [{"scope": "address", "failures": 20}]


def test_the_hundredth_failure_waits_for_a_new_enrolment_code(
    client: TestClient, db: Database, clock: FrozenClock
) -> None:
    person = make_user(db, sign_in=False)
    db.write_sync(lambda s: s.add(AuthThrottle(key=throttle.account_key(person.id), failures=99,
                                               last_failure_at=clock.now())))
    _fail(client, person.username)
    clock.advance(7 * 24 * 3600)

    r = login_person(client, person, clock.now())
    assert r.status_code == 429 and "enrolment code" in r.json()["detail"]
    admin = Api(client, make_user(db, "admin"))
    code = admin.post(f"/admin/users/{person.id}/enrolment-code").json()["enrolment_code"]
    secret = secret_of(enrol(client, person.username, code))
    assert login(client, person.username, code_at(secret, clock.now()), password=STRONG_PASSWORD).status_code == 200


def test_quiet_counters_are_forgotten_but_a_suspension_is_kept(db: Database, clock: FrozenClock) -> None:
    unknown, known, suspended = throttle.account_key("a" * 32), throttle.account_key("b" * 32), \
        throttle.account_key("c" * 32)
    address = throttle.address_key("203.0.113.9")
    _seed(db, unknown, throttle.ACCOUNT, 3, clock)
    _seed(db, suspended, throttle.ACCOUNT, 100, clock)
    _seed(db, address, throttle.ADDRESS, 25, clock)
    clock.advance(2 * 24 * 3600)
    _seed(db, known, throttle.ACCOUNT, 2, clock)

    def keys() -> set[str]:
        return set(db.read_sync(lambda s: s.scalars(select(AuthThrottle.key)).all()))

    assert db.write_sync(lambda s: throttle.prune(s, clock.now())) == 1
    assert keys() == {unknown, known, suspended}  # the address's day of quiet is over
    clock.advance(29 * 24 * 3600)
    assert db.write_sync(lambda s: throttle.prune(s, clock.now())) == 1
    assert keys() == {known, suspended}  # a month without a failure; the suspension waits for recovery
    assert db.read_sync(lambda s: throttle.lock_of(s, [(suspended, throttle.ACCOUNT)], clock.now())) == \
        throttle.Lock(throttle.ACCOUNT.max_lock_s, suspended=True)
