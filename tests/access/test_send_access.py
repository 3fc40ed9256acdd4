"""The send path's one-statement caller and access check agrees with the two checks it replaces
(``sessions.actor_for``, then ``policy.thread_facts_for_write``) for every kind of caller."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lockbox.access import policy
from lockbox.clock import FrozenClock
from lockbox.db import Database
from lockbox.db.uow import Credentials
from lockbox.identity.sessions import actor_for, end_user_sessions
from lockbox.messaging import service
from tests.clinic import Clinic
from tests.factories import Api

_FACTS = ("id", "patient_id", "care_team_id", "pool_id", "assignee_id", "urgent", "emergency", "key_version",
          "data_key_wrapped", "data_key_uses", "members", "pool_members", "patient_role", "patient_email",
          "patient_phone", "patient_active")


def _outcome(db: Database, fn: Any) -> Any:
    try:
        actor, row = db.write_sync(fn)
    except Exception as exc:
        return type(exc).__name__
    return actor, tuple(getattr(row, name) for name in _FACTS)


def _both(db: Database, token: str, thread_id: str) -> tuple[Any, Any]:
    creds = Credentials(token, "192.0.2.7")

    def two_statements(session: Session) -> Any:
        actor = actor_for(session, creds)
        return actor, policy.thread_facts_for_write(session, actor, thread_id, extra=service._REPLY_EXTRA)

    def one_statement(session: Session) -> Any:
        return policy.caller_and_thread_facts_for_write(session, creds, thread_id, extra=service._REPLY_EXTRA)

    return _outcome(db, two_statements), _outcome(db, one_statement)


@pytest.fixture
def routed_thread(client: TestClient, clinic: Clinic) -> str:
    tid: str = Api(client, clinic.patient).post("/threads", json={"subject": "Rash", "body": "Itchy"}).json()["id"]
    return tid


def test_every_caller_gets_the_same_answer_from_one_statement(db: Database, clinic: Clinic,
                                                              routed_thread: str) -> None:
    answers = {}
    for field in fields(clinic):
        person = getattr(clinic, field.name)
        for thread_id in (routed_thread, "0" * 32):
            two, one = _both(db, person.token, thread_id)
            assert one == two, (field.name, thread_id)
            answers[field.name, thread_id == routed_thread] = one if isinstance(one, str) else "thread"
    # The check is not vacuous: the thread's patient, care team and pool see it; outsiders do not.
    assert {name for (name, real), answer in answers.items() if real and answer == "thread"} == {
        "patient", "doctor", "nurse"}
    assert answers["compliance", True] == answers["other_patient", True] == "NotFound"


def test_an_unknown_ended_or_idle_session_is_unauthenticated_before_any_access_check(
        db: Database, clinic: Clinic, clock: FrozenClock, routed_thread: str) -> None:
    assert _both(db, "not-a-token", routed_thread) == ("Unauthenticated", "Unauthenticated")
    assert _both(db, "not-a-token", "0" * 32) == ("Unauthenticated", "Unauthenticated")
    db.write_sync(end_user_sessions, user_id=clinic.nurse.id, reason="test")
    assert _both(db, clinic.nurse.token, routed_thread) == ("Unauthenticated", "Unauthenticated")
    clock.advance(24 * 3600)
    assert _both(db, clinic.patient.token, routed_thread) == ("Unauthenticated", "Unauthenticated")


def test_break_glass_opens_the_thread_to_the_one_statement_as_to_the_two(
        client: TestClient, db: Database, clinic: Clinic, routed_thread: str) -> None:
    outsider = clinic.other_team_doctor
    assert _both(db, outsider.token, routed_thread) == ("NotFound", "NotFound")
    r = Api(client, outsider).post(f"/threads/{routed_thread}/break-glass",
                                   json={"reason": "Covering the on-call shift for team A"})
    assert r.status_code == 204, r.text
    two, one = _both(db, outsider.token, routed_thread)
    assert one == two and not isinstance(one, str)
