"""Small factories that build directory data straight through the models, and signed-in API clients.

They bypass enrolment on purpose (identity tests cover it through the API); sessions are real.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date
from functools import cache
from typing import Any

import pyotp
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lockbox.consent.models import ConsentRecord
from lockbox.db import Database, runtime_of
from lockbox.directory.models import CareTeam, CareTeamMember, Location, Pool, PoolMember
from lockbox.identity import credentials, sessions
from lockbox.identity.models import Patient, User

PASSWORD = "plum-kettle-arbor-92-quietly"
_counter = itertools.count(1)


@cache
def password_hash() -> str:
    return credentials.hash_password(PASSWORD)


@dataclass
class Person:
    id: str
    username: str
    role: str
    totp_secret: str
    token: str | None = None

    def totp(self, clock_now: Any | None = None) -> str:
        t = pyotp.TOTP(self.totp_secret)
        return t.at(clock_now) if clock_now is not None else t.now()


def make_location(db: Database, id: str = "main", name: str = "Main Street Clinic") -> str:
    def _do(session: Session) -> str:
        if session.get(Location, id) is None:
            session.add(Location(id=id, name=name))
        return id

    return db.write_sync(_do)


def make_team(db: Database, id: str = "team-a", name: str | None = None) -> str:
    make_location(db)

    def _do(session: Session) -> str:
        if session.get(CareTeam, id) is None:
            session.add(CareTeam(id=id, name=name or id.title(), location_id="main"))
        return id

    return db.write_sync(_do)


def make_pool(db: Database, id: str, roles: list[str], members: list[Person] = (), lead: Person | None = None) -> str:  # type: ignore[assignment]
    def _do(session: Session) -> str:
        session.add(Pool(id=id, name=id.replace("-", " ").title(), roles=roles, lead_id=lead.id if lead else None))
        session.flush()
        for m in members:
            session.add(PoolMember(pool_id=id, user_id=m.id))
        return id

    return db.write_sync(_do)


def make_user(
    db: Database,
    role: str = "patient",
    *,
    username: str | None = None,
    care_teams: list[str] = (),  # type: ignore[assignment]
    consent: str | None = "granted",
    mrn: str | None = None,
    pcp: Person | None = None,
    email: str | None = None,
    sign_in: bool = True,
) -> Person:
    """A user who has enrolled (password + TOTP) and, unless ``sign_in=False``, holds a session token."""
    n = next(_counter)
    username = username or f"{role}{n}"
    secret = credentials.new_totp_secret()
    for team in care_teams:
        make_team(db, team)

    def _do(session: Session) -> Person:
        rt = runtime_of(session)
        now = rt.clock.now()
        user = User(username=username, display_name=username.title(), role=role, email=email,
                    password_hash=password_hash(), created_at=now, enrolled_at=now, location_id=None)
        session.add(user)
        session.flush()
        user.totp_secret_sealed = credentials.seal_totp_secret(rt.keyring, user.id, secret)
        if role == "patient":
            session.add(Patient(user_id=user.id, mrn=mrn or f"MRN{n:06d}", birth_date=date(1980, 1, 1 + n % 27),
                                pcp_id=pcp.id if pcp else None, care_team_id=care_teams[0] if care_teams else None))
            if consent:
                session.add(ConsentRecord(patient_id=user.id, status=consent, terms_version="2026-01",
                                          method="directory", recorded_at=now))
        else:
            for team in care_teams:
                session.add(CareTeamMember(care_team_id=team, user_id=user.id))
        token = None
        if sign_in:
            token, _ = sessions.create_session(session, user=user, device="pytest", client_addr="testclient")
        return Person(user.id, username, role, secret, token)

    return db.write_sync(_do)


def add_to_pool(db: Database, pool: str, person: Person) -> None:
    db.write_sync(lambda s: s.add(PoolMember(pool_id=pool, user_id=person.id)))


def auth(person: Person) -> dict[str, str]:
    assert person.token, "person was made with sign_in=False"
    return {"Authorization": f"Bearer {person.token}"}


class Api:
    """A client acting as one person: ``api.post('/threads', json=...)`` under /api/v1."""

    def __init__(self, client: TestClient, person: Person) -> None:
        self.client = client
        self.person = person

    def _h(self, kw: dict[str, Any]) -> dict[str, Any]:
        kw.setdefault("headers", {}).update(auth(self.person))
        return kw

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get("/api/v1" + path, **self._h(kw))

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post("/api/v1" + path, **self._h(kw))

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete("/api/v1" + path, **self._h(kw))

    def put(self, path: str, **kw: Any) -> Any:
        return self.client.put("/api/v1" + path, **self._h(kw))
