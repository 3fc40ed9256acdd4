"""Who hears of a message: each of the thread's followers once per open socket, nobody else, ids only.

Followers are the thread's members, its pool's members and its assignee. Without a pool in the directory, a
patient's first reply brings the patient's care team in instead (``routing.service._care_team_takes_it``),
so every clinician of the team follows the thread from then on. bench/load.py counts the events per send
against this rule (``message`` events = followers, one socket each).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from fastapi.testclient import TestClient

from lockbox.db import Database
from tests.factories import Api, Person, auth, make_user

EVENT_KEYS = {"type", "thread_id", "message_id", "seq"}


def _drain(client: TestClient, ws: Any, person: Person) -> list[dict[str, Any]]:
    """The message events this socket got so far: a probe published last marks the end."""
    client.app.state.lockbox.hub.publish([person.id], {"type": "probe"})  # type: ignore[attr-defined]
    events = []
    while (event := ws.receive_json())["type"] != "probe":
        if event["type"] == "message":
            events.append(event)
    return events


def test_a_message_reaches_each_follower_once_per_socket_and_nobody_else(client: TestClient,
                                                                         db: Database) -> None:
    author = make_user(db, "nurse", care_teams=["team-a"])
    colleague = make_user(db, "nurse", care_teams=["team-a"])
    other_team = make_user(db, "nurse", care_teams=["team-b"])
    patient = make_user(db, "patient", care_teams=["team-a"])
    stranger = make_user(db, "patient", care_teams=["team-a"])
    sockets = {"author": 2, "colleague": 1, "other_team": 1, "patient": 1, "stranger": 1}
    people = {"author": author, "colleague": colleague, "other_team": other_team, "patient": patient,
              "stranger": stranger}
    with ExitStack() as stack:
        open_ = {name: [stack.enter_context(client.websocket_connect("/api/v1/events", headers=auth(people[name])))
                        for _ in range(n)] for name, n in sockets.items()}
        for ws in (w for group in open_.values() for w in group):
            assert ws.receive_json()["type"] == "ready"
        tid = Api(client, author).post("/threads", json={"subject": "Follow-up", "body": "How is the ankle?",
                                                         "patient": patient.username,
                                                         "confirm_recipients": True}).json()["id"]
        first = Api(client, patient).post(f"/threads/{tid}/messages", json={"body": "Better, thanks."}).json()
        second = Api(client, author).post(f"/threads/{tid}/messages", json={"body": "Good to hear."}).json()
        db.write_sync(lambda s: None)  # the sends' after-commit publishing has run
        heard = {name: [_drain(client, ws, people[name]) for ws in wss] for name, wss in open_.items()}

    followers = {p["id"] for p in Api(client, author).get(f"/threads/{tid}").json()["participants"]}
    assert colleague.id in followers, "the care team follows the thread once the patient's reply is routed"
    for name, per_socket in heard.items():
        for events in per_socket:
            assert all(set(e) == EVENT_KEYS for e in events), events  # ids only, never content
            ids = [e["message_id"] for e in events]
            assert len(ids) == len(set(ids)), (name, "a socket hears of a message once")
            if people[name].id in followers:
                assert second["id"] in ids, name
            else:
                assert ids == [], (name, "only those who may read the thread hear of it")
    # Everyone who hears may read: the event tells nothing to anyone else.
    for name in ("author", "colleague", "patient"):
        assert Api(client, people[name]).get(f"/threads/{tid}").status_code == 200
    assert first["id"] in [e["message_id"] for e in heard["author"][0]]
    assert len(heard["author"]) == 2 and heard["author"][0] == heard["author"][1]
