"""Open sockets' sessions are re-checked together: a session that times out closes its socket."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lockbox.clock import FrozenClock
from lockbox.db import Database
from lockbox.identity.models import AuthSession
from lockbox.realtime import api
from lockbox.realtime.api import open_sessions
from tests.clinic import Clinic
from tests.factories import auth


def test_open_sessions_follows_the_session_rules(db: Database, clinic: Clinic, clock: FrozenClock) -> None:
    ids = db.read_sync(lambda s: {p.id: s.scalar(select(AuthSession.id).where(AuthSession.user_id == p.id))
                                  for p in (clinic.nurse, clinic.patient)})
    assert db.read_sync(open_sessions, session_ids=list(ids.values())) == set(ids.values())
    clock.advance(16 * 60)  # past the 15-minute idle timeout, with no activity
    assert db.read_sync(open_sessions, session_ids=list(ids.values())) == set()


def test_a_socket_whose_session_timed_out_is_closed(
    client: TestClient, clinic: Clinic, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "RECHECK_S", 0.05)
    with client.websocket_connect("/api/v1/events", headers=auth(clinic.nurse)) as ws:
        assert ws.receive_json()["type"] == "ready"
        clock.advance(16 * 60)
        assert ws.receive_json() == {"type": "session_ended"}
