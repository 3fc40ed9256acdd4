"""Routing a new patient thread: the rules pick the pool, balance the responder, and the decision explains
itself (API, decision history and audit) without PHI."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from lockbox.clock import FrozenClock
from lockbox.messaging.models import Thread
from lockbox.routing.models import RoutingDecision
from tests.routing.conftest import Routing

BILL = ("Question about my bill", "I was charged twice for my visit last month, can someone check my invoice?")
RASH = ("Rash", "I have had a mild itchy rash on my forearm for a week. No fever. Should I make an appointment?")
REFILL = ("Refill", "Could you please send a refill of my lisinopril to my usual pharmacy? I have 3 pills left.")


def _assignee(r: Routing, thread_id: str) -> str | None:
    return r.query(lambda s: s.scalar(select(Thread.assignee_id).where(Thread.id == thread_id)))


def test_billing_goes_to_billing_and_explains_itself(routing: Routing) -> None:
    r, c = routing, routing.c
    out = r.send(c.patient, *BILL)
    routing_out: dict[str, Any] = out["routing"]
    assert routing_out | {"explanation": ""} == {"urgency": "routine", "topic": "billing", "pool": "billing",
                                                 "assignee": "bill.ing", "rule": "billing", "explanation": ""}
    assert "billing" in routing_out["explanation"]
    for word in ("charged", "invoice", "visit", "twice"):
        assert word not in routing_out["explanation"].lower()
    history = r.api(c.biller).get(f"/threads/{out['id']}/routing").json()
    assert [h["trigger"] for h in history] == ["message"]
    phases = history[0]["phases"]
    assert set(phases) == {"filter", "rules", "balance", "context"}
    assert phases["rules"]["rule"] == "billing" and phases["balance"]["reason"] == "least_load"
    assert phases["context"]["care_team"] == "team-a"
    assert "charged" not in str(phases)
    audit = r.audit("routing.thread.route")
    assert audit[-1].subject_id == out["id"] and audit[-1].details["rule"] == "billing"
    # The patient sees the contract's routing object, not the phases.
    assert r.api(c.patient).get(f"/threads/{out['id']}").json()["routing"]["rule"] == "billing"
    assert r.api(c.patient).get(f"/threads/{out['id']}/routing").status_code == 404


def test_missing_pool_falls_back_to_the_care_team(routing: Routing) -> None:
    r, c = routing, routing.c
    out = r.send(c.patient, *REFILL)  # the clinic has no medication pool
    assert out["routing"]["topic"] == "medication" and out["routing"]["pool"] is None
    assert out["routing"]["assignee"] in {"dr.house", "nina.nurse"}  # team A
    assert "pool medication does not exist" in out["routing"]["explanation"]
    detail = r.api(c.doctor).get(f"/threads/{out['id']}")
    assert detail.status_code == 200  # the care team reads it


def test_the_patients_own_care_team_comes_first(routing: Routing) -> None:
    r, c = routing, routing.c
    a = [r.send(c.patient, *RASH)["routing"]["assignee"] for _ in range(3)]
    assert a == ["nina.nurse"] * 3  # team A's nurse, however much work she already has
    assert r.send(c.other_patient, *RASH)["routing"]["assignee"] == "ned.nurse"  # team B's


def test_patient_flag_raises_routine_to_urgent(routing: Routing) -> None:
    out = routing.send(routing.c.patient, *BILL, urgent=True)
    assert out["routing"]["urgency"] == "urgent" and out["routing"]["pool"] == "nurse-triage"
    assert out["routing"]["rule"] == "urgent"


def test_off_duty_responder_is_skipped_and_hands_on_her_threads(routing: Routing) -> None:
    r, c = routing, routing.c
    first = r.send(c.patient, *RASH)
    assert first["routing"]["assignee"] == "nina.nurse"
    duty = r.api(c.nurse).put("/routing/duty", json={"available": False})
    assert duty.status_code == 200 and duty.json() == {"available": False, "clinic_open": True, "on_call": []}
    assert _assignee(r, first["id"]) == r.ned.id  # handed on at once
    assert r.send(c.patient, *RASH)["routing"]["assignee"] == "ned.nurse"  # care team off duty: the pool
    reassign = r.audit("routing.thread.reassign")
    assert reassign[-1].details["previous"] == c.nurse.id and reassign[-1].details["assignee"] == r.ned.id
    r.api(c.nurse).put("/routing/duty", json={"available": True})
    assert r.send(c.patient, *RASH)["routing"]["assignee"] == "nina.nurse"


def test_after_hours_the_on_call_responder_takes_it(routing: Routing, clock: FrozenClock) -> None:
    r, c = routing, routing.c
    clock.advance(12 * 3600)  # 22:00 in New York: nobody on duty
    out = r.send(c.patient, *RASH)
    assert out["routing"]["pool"] == "nurse-triage" and out["routing"]["assignee"] == "dr.oncall"
    assert "on-call" in out["routing"]["explanation"]
    billing = r.send(c.patient, *BILL)  # nobody on call for billing: the queue keeps it
    assert billing["routing"]["pool"] == "billing" and billing["routing"]["assignee"] is None
    assert [t["id"] for t in r.api(c.biller).get("/pools/billing/threads").json()] == [billing["id"]]


def test_the_duty_sweep_reassigns_when_clinic_hours_end(routing: Routing, clock: FrozenClock, run_jobs) -> None:  # type: ignore[no-untyped-def]
    r, c = routing, routing.c
    out = r.send(c.patient, *RASH)
    bill = r.send(c.patient, *BILL)
    assert out["routing"]["assignee"] == "nina.nurse" and bill["routing"]["assignee"] == "bill.ing"
    clock.advance(9 * 3600)  # 19:00: the clinic closed at 18:00
    run_jobs()
    assert _assignee(r, out["id"]) == r.oncall_doc.id
    assert _assignee(r, bill["id"]) is None  # back to the billing queue
    history = r.api(r.oncall_doc).get(f"/threads/{out['id']}/routing").json()
    assert [h["trigger"] for h in history] == ["message", "reassign"]
    assert history[-1]["assignee"] == "dr.oncall"
    # The sweep keeps itself going while threads are assigned.
    due = [j for j in r.jobs("routing.duty_sweep") if j.done_at is None]
    assert len(due) == 1 and due[0].run_at > clock.now()


def test_workload_counts_open_work_weighted_by_priority(routing: Routing) -> None:
    r, c = routing, routing.c
    r.send(c.patient, *RASH)
    r.send(c.patient, *BILL, urgent=True)
    rows = {w["username"]: w for w in r.api(c.nurse).get("/pools/nurse-triage/workload").json()}
    assert rows["nina.nurse"]["open_threads"] == 2 and rows["nina.nurse"]["weighted_load"] == 1 + 3
    assert rows["ned.nurse"]["open_threads"] == 0
    assert r.api(c.biller).get("/pools/nurse-triage/workload").status_code == 404


def test_decisions_are_stored_with_their_phases(routing: Routing) -> None:
    out = routing.send(routing.c.patient, *RASH)
    rows = routing.query(lambda s: list(s.scalars(select(RoutingDecision)
                                                  .where(RoutingDecision.thread_id == out["id"]))))
    assert len(rows) == 1 and rows[0].message_id and rows[0].phases["filter"]["topic"] == "symptoms"
    assert rows[0].trigger == "message" and rows[0].pool_id == "nurse-triage"
