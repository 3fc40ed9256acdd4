"""Claim, release and transfer: for the thread's pool and care team, audited, pushed to those concerned,
and a 404 for everyone who cannot see the thread."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Events
from tests.routing.conftest import Routing

RASH = ("Rash", "I have had a mild itchy rash on my forearm for a week. No fever. Should I make an appointment?")


def test_claim_release_transfer(routing: Routing, events: Events) -> None:
    r, c = routing, routing.c
    tid = r.send(c.patient, *RASH)["id"]
    ned = r.api(r.ned)
    got = ned.post(f"/threads/{tid}/claim")
    assert got.status_code == 200 and got.json() == {"thread_id": tid, "pool": "nurse-triage", "assignee": "ned.nurse"}
    claim_event = ({c.nurse.id, r.ned.id, r.lead.id}, {"type": "assignment", "thread_id": tid, "assignee": r.ned.id})
    deadline = time.monotonic() + 5  # events leave after the commit is acknowledged
    while claim_event not in [(set(u), e) for u, e in events] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert claim_event in [(set(u), e) for u, e in events]
    assert r.audit("routing.thread.claim")[-1].details["previous"] == c.nurse.id
    assert r.api(c.patient).get(f"/threads/{tid}").json()["routing"]["assignee"] == "ned.nurse"

    assert r.api(c.nurse).post(f"/threads/{tid}/release").status_code == 403  # not hers any more
    assert ned.post(f"/threads/{tid}/release").json()["assignee"] is None
    assert r.api(r.lead).post(f"/threads/{tid}/claim").json()["assignee"] == "nora.lead"

    moved = r.api(r.lead).post(f"/threads/{tid}/transfer", json={"to": "nina.nurse"})
    assert moved.status_code == 200 and moved.json()["assignee"] == "nina.nurse"
    assert r.audit("routing.thread.transfer")[-1].details["assignee"] == c.nurse.id
    for bad in ("pat.jones", "cody.compliance", "bill.ing", "nobody.here"):
        res = r.api(c.nurse).post(f"/threads/{tid}/transfer", json={"to": bad})
        assert res.status_code == 400, bad
    # A clinician outside the pool is brought in and can open the thread.
    assert r.api(c.nurse).post(f"/threads/{tid}/transfer", json={"to": "dr.wilson"}).json()["assignee"] == "dr.wilson"
    assert r.api(c.other_team_doctor).get(f"/threads/{tid}").status_code == 200
    history = r.api(c.nurse).get(f"/threads/{tid}/routing").json()
    assert [h["trigger"] for h in history] == ["message", "claim", "release", "claim", "transfer", "transfer"]


@pytest.mark.parametrize("action", ["claim", "release", "transfer"])
def test_outsiders_get_404(routing: Routing, action: str) -> None:
    r, c = routing, routing.c
    tid = r.send(c.patient, *RASH)["id"]
    body = {"json": {"to": "ned.nurse"}} if action == "transfer" else {}
    for who in (c.other_team_doctor, c.biller, c.scheduler, c.compliance, c.admin, c.patient, c.other_patient):
        res = r.api(who).post(f"/threads/{tid}/{action}", **body)
        assert res.status_code == 404, (who.username, res.status_code)
        assert res.json()["error"] == "not_found"
    assert r.api(c.nurse).post(f"/threads/{'0' * 32}/{action}", **body).status_code == 404
    assert r.audit(f"routing.thread.{action}") == []


def test_claiming_needs_the_pool_or_for_a_pool_less_thread_the_care_team(routing: Routing) -> None:
    r, c = routing, routing.c
    tid = r.send(c.patient, *RASH)["id"]
    # dr.house reads the triage thread through the care team, but it is the pool's to take.
    assert r.api(c.doctor).get(f"/threads/{tid}").status_code == 200
    assert r.api(c.doctor).post(f"/threads/{tid}/claim").status_code == 403
    # With no medication pool, the care team is the pool.
    refill = r.send(c.patient, "Refill", "Could you please send a refill of my lisinopril to my pharmacy?")
    assert refill["routing"]["pool"] is None
    assert r.api(c.doctor).post(f"/threads/{refill['id']}/claim").json()["assignee"] == "dr.house"
