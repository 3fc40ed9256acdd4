"""The demo clinic: every role gets a login that really works, reruns keep credentials, real data is safe."""

from __future__ import annotations

import io
from typing import Any

import pyotp
import pytest
import zxcvbn
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.consent import service as consent
from lockbox.db import Database, runtime_of
from lockbox.demo import DEMO_THREADS, DemoRefused, Login, print_logins, seed_demo
from lockbox.directory.models import CareTeam, OnCallShift, Pool
from lockbox.identity import credentials
from lockbox.identity.models import Patient, User
from lockbox.identity.roles import Role
from lockbox.messaging.models import Thread
from tests.factories import make_user

DEFAULT_RULE_POOLS = {"nurse-triage", "medication", "results", "scheduling", "billing", "front-desk"}


def quiet(buffer: io.StringIO | None = None) -> Console:
    return Console(file=buffer or io.StringIO(), width=80)


def accounts(db: Database) -> dict[str, dict[str, Any]]:
    def _read(session: Session) -> dict[str, dict[str, Any]]:
        keyring = runtime_of(session).keyring
        return {u.username: {"hash": u.password_hash, "enrolled": u.enrolled_at, "code": u.enrolment_code_hash,
                             "secret": credentials.open_totp_secret(keyring, u.id, u.totp_secret_sealed)
                             if u.totp_secret_sealed else None}
                for u in session.scalars(select(User))}

    return db.read_sync(_read)


def count(db: Database, model: type) -> int:
    return db.read_sync(lambda s: s.scalar(select(func.count()).select_from(model)) or 0)


def test_every_role_gets_a_login_that_works(settings: Settings, standalone_db: Database) -> None:
    notes = io.StringIO()
    logins = seed_demo(settings, console=quiet(notes))

    assert {login.role for login in logins} == {r.value for r in Role}
    stored = accounts(standalone_db)
    assert set(stored) == {login.username for login in logins}
    for login in logins:
        account = stored[login.username]
        assert account["enrolled"] is not None and account["code"] is None
        assert login.password is not None
        assert credentials.verify_password(account["hash"], login.password)
        # The printed secret is the sealed one: an authenticator holding it produces codes the server accepts.
        assert pyotp.TOTP(account["secret"]).verify(pyotp.TOTP(login.totp_secret).now())
        strength = zxcvbn.zxcvbn(login.password, user_inputs=[login.username, login.display_name])
        assert strength["score"] >= 3, login.username
    assert len({login.totp_secret for login in logins}) == len(logins)

    assert {p for (p,) in standalone_db.read_sync(lambda s: s.execute(select(Pool.id)).all())} == DEFAULT_RULE_POOLS
    assert count(standalone_db, CareTeam) == 2
    assert count(standalone_db, OnCallShift) == 2

    def _consents(session: Session) -> list[str | None]:
        statuses = []
        for patient in session.scalars(select(Patient)):
            rec = consent.current(session, patient_id=patient.user_id)
            statuses.append(rec.status if rec else None)
        return sorted(statuses, key=str)

    consents = standalone_db.read_sync(_consents)
    assert consents.count("declined") == 1 and consents.count("granted") >= 2 and None not in consents
    # Messaging exists in this build, so every demo thread was created and nothing was refused.
    assert count(standalone_db, Thread) == len(DEMO_THREADS)
    assert "note:" not in notes.getvalue()


def test_running_the_demo_again_keeps_and_prints_the_same_logins(
    settings: Settings, standalone_db: Database
) -> None:
    first = seed_demo(settings, console=quiet())
    before = accounts(standalone_db)

    # Someone changed a password in the demo: it is kept, and no longer printed as if it were known.
    changed = credentials.hash_password("a-new-Secret-of-my-own-77")

    def change(session: Session) -> None:
        session.scalars(select(User).where(User.username == "dr.house")).one().password_hash = changed

    standalone_db.write_sync(change)
    second = seed_demo(settings, console=quiet())

    expected = [login if login.username != "dr.house" else Login(login.username, login.role, login.display_name,
                                                                  None, login.totp_secret) for login in first]
    assert second == expected
    after = accounts(standalone_db)
    assert after.pop("dr.house")["hash"] == changed
    before.pop("dr.house")
    assert after == before
    assert count(standalone_db, Thread) == len(DEMO_THREADS)
    assert count(standalone_db, OnCallShift) == 2


def test_the_demo_refuses_a_database_that_holds_real_people(settings: Settings, standalone_db: Database) -> None:
    make_user(standalone_db, "physician", username="dr.real", sign_in=False)

    with pytest.raises(DemoRefused, match="1 user\\(s\\) who are not demo users"):
        seed_demo(settings, console=quiet())

    assert list(accounts(standalone_db)) == ["dr.real"]
    with pytest.raises(DemoRefused, match="production"):
        seed_demo(settings.model_copy(update={"env": "production"}), console=quiet())


def test_printed_logins_are_never_cut_short() -> None:
    login = Login("phil.pharmacist", "medical_assistant", "Phil", "demo-phil.pharmacist-Juniper-42",
                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    buffer = io.StringIO()

    print_logins([login], quiet(buffer), "http://127.0.0.1:8000/")

    text = buffer.getvalue()
    for value in (login.username, login.role, "demo-phil.pharmacist-Juniper-42", login.totp_secret):
        assert value in text
    assert "python -c \"import pyotp; print(pyotp.TOTP('SECRET').now())\"" in text


def test_each_demo_login_signs_in_through_the_api(settings: Settings, client: TestClient,
                                                  clock: FrozenClock) -> None:
    logins = seed_demo(settings, console=quiet())

    for login in logins:
        r = client.post("/api/v1/auth/login", json={"username": login.username, "password": login.password,
                                                    "totp": pyotp.TOTP(login.totp_secret).at(clock.now())})
        assert r.status_code == 200, (login.username, r.json())
        me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json()['token']}"})
        assert (me.json()["username"], me.json()["role"]) == (login.username, login.role)
