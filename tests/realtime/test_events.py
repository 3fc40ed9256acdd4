"""The event stream: committed events reach the right people, and ending a session closes its socket."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from lockbox.db import Database
from lockbox.identity import sessions
from lockbox.realtime import api
from tests.clinic import Clinic
from tests.factories import Api, auth


def _next_of_type(ws, kind: str, limit: int = 10) -> dict:  # type: ignore[no-untyped-def, type-arg]
    for _ in range(limit):
        event = ws.receive_json()
        if event["type"] == kind:
            return event  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind} event")


def test_pool_member_gets_new_thread_and_patient_gets_reply(client: TestClient, clinic: Clinic) -> None:
    with client.websocket_connect("/api/v1/events", headers=auth(clinic.nurse)) as nurse_ws, \
            client.websocket_connect("/api/v1/events", headers=auth(clinic.patient)) as patient_ws:
        assert nurse_ws.receive_json()["type"] == "ready"
        assert patient_ws.receive_json()["type"] == "ready"
        tid = Api(client, clinic.patient).post("/threads", json={"subject": "Q", "body": "hello"}).json()["id"]
        event = _next_of_type(nurse_ws, "thread")
        assert event["thread_id"] == tid
        assert "hello" not in str(event) and "Q" not in event.values()  # events carry ids, not content
        Api(client, clinic.nurse).post(f"/threads/{tid}/messages", json={"body": "hi"})
        assert _next_of_type(patient_ws, "message")["thread_id"] == tid
        Api(client, clinic.patient).post(f"/threads/{tid}/read")
        read = _next_of_type(nurse_ws, "read")
        assert read["user_id"] == clinic.patient.id and read["seq"] == 2


def test_outsiders_receive_nothing(client: TestClient, clinic: Clinic, db: Database) -> None:
    with client.websocket_connect("/api/v1/events", headers=auth(clinic.other_patient)) as ws:
        assert ws.receive_json()["type"] == "ready"
        Api(client, clinic.patient).post("/threads", json={"subject": "Q", "body": "private"})
        db.write_sync(lambda s: None)  # the writer has run the send's after-commit publishing by now
        # A marker event to the outsider proves ordering: nothing else arrived before it.
        client.app.state.lockbox.hub.publish([clinic.other_patient.id], {"type": "probe"})  # type: ignore[attr-defined]
        assert ws.receive_json() == {"type": "probe"}


def test_unauthenticated_socket_is_closed(client: TestClient) -> None:
    with client.websocket_connect("/api/v1/events") as ws:
        ws.send_json({"type": "auth", "token": "not-a-token"})
        assert ws.receive_json()["error"] == "unauthenticated"
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()


def test_first_frame_authentication(client: TestClient, clinic: Clinic) -> None:
    with client.websocket_connect("/api/v1/events") as ws:
        ws.send_json({"type": "auth", "token": clinic.nurse.token})
        assert ws.receive_json()["type"] == "ready"


def test_remote_wipe_reaches_the_socket_before_it_closes(client: TestClient, clinic: Clinic, db: Database) -> None:
    with client.websocket_connect("/api/v1/events", headers=auth(clinic.nurse)) as ws:
        assert ws.receive_json()["type"] == "ready"
        db.write_sync(sessions.end_user_sessions, user_id=clinic.nurse.id, reason="wipe", wipe=True)
        assert ws.receive_json() == {"type": "wipe"}
        assert ws.receive_json() == {"type": "session_ended"}
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()
    assert Api(client, clinic.nurse).get("/threads").status_code == 401


def test_a_client_that_goes_away_is_unsubscribed_without_waiting_for_a_recheck(
    client: TestClient, clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "RECHECK_S", 3600.0)  # only the client's going away can end the stream
    hub = client.app.state.lockbox.hub  # type: ignore[attr-defined]
    with client.websocket_connect("/api/v1/events", headers=auth(clinic.nurse)) as ws:
        assert ws.receive_json()["type"] == "ready"
        assert hub.subscriber_count() == 1
    for _ in range(500):
        if hub.subscriber_count() == 0:
            break
        time.sleep(0.01)
    assert hub.subscriber_count() == 0
