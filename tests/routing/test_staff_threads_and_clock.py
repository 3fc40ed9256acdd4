"""A patient's reply in a thread staff started starts a response clock like a new patient message, and goes back
to the staff member who wrote; a thread the patient addressed to named staff has a clock too. The clock records
when staff answered and when the ladder climbed, and the routing API shows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from lockbox.clock import FrozenClock
from lockbox.messaging.models import Participant, Thread
from lockbox.routing.models import RoutingDecision, RoutingState
from tests.routing.conftest import Routing

HOUR = 3600


def _staff_thread(r: Routing, body: str = "Your lab results are in, everything looks fine.") -> str:
    out = r.api(r.c.doctor).post("/threads", json={"subject": "Your labs", "body": body, "patient": "pat.jones",
                                                   "confirm_recipients": True})
    assert out.status_code == 201, out.text
    return out.json()["id"]  # type: ignore[no-any-return]


def _state(r: Routing, tid: str) -> RoutingState | None:
    return r.query(lambda s: s.get(RoutingState, tid))


def _thread(r: Routing, tid: str) -> Thread:
    return r.query(lambda s: s.get(Thread, tid))


def test_a_staff_thread_has_no_clock_until_the_patient_replies(routing: Routing) -> None:
    r = routing
    tid = _staff_thread(r)
    assert _state(r, tid) is None  # nobody waits for staff: staff wrote
    reply = r.api(r.c.patient).post(f"/threads/{tid}/messages",
                                    json={"body": "I've had a fever of 102 since last night and chills, what now?"})
    assert reply.status_code == 201 and reply.json()["auto_reply"] is None
    state = _state(r, tid)
    assert state is not None
    assert (state.priority, state.rule, state.sla, state.pending_seq) == ("urgent", "urgent", "1h", 2)
    thread = _thread(r, tid)
    # The doctor wrote, so the doctor (on duty) takes the answer; the pool's queue still shows the thread.
    assert thread.pool_id == "nurse-triage" and thread.urgent and thread.assignee_id == r.c.doctor.id
    decisions = r.query(lambda s: list(s.scalars(select(RoutingDecision).where(RoutingDecision.thread_id == tid)
                                                 .order_by(RoutingDecision.created_at))))
    assert [(d.trigger, d.rule) for d in decisions] == [("message", "addressed"), ("reply", "urgent")]
    assert "fever" not in decisions[0].explanation and "chills" not in str(decisions[0].phases)


def test_the_first_reply_escalates_if_nobody_answers(routing: Routing, clock: FrozenClock,
                                                     run_jobs: Callable[[], int]) -> None:
    r = routing
    tid = _staff_thread(r)
    r.api(r.c.patient).post(f"/threads/{tid}/messages", json={"body": "Thanks! Can I get a copy for my records?"})
    state = _state(r, tid)
    assert state is not None and state.priority == "routine" and state.sla == "2bd"
    assert _thread(r, tid).pool_id == "front-desk"  # per the rules, as a new message would go
    clock.advance(2 * 24 * HOUR - 60)  # Wednesday 10:00 -> Friday 09:59: not yet two business days
    run_jobs()
    assert r.audit("routing.thread.escalate") == []
    clock.advance(120)
    run_jobs()
    assert [a.subject_id for a in r.audit("routing.thread.escalate")] == [tid]
    state = _state(r, tid)
    assert state is not None and state.escalations == 1 and state.escalated_at == clock.now()


def test_later_replies_pay_only_for_the_emergency_check(routing: Routing) -> None:
    r = routing
    tid = _staff_thread(r)
    api = r.api(r.c.patient)
    api.post(f"/threads/{tid}/messages", json={"body": "Thanks, one question about my cholesterol number"})
    api.post(f"/threads/{tid}/messages", json={"body": "Also my billing address changed"})
    rows = r.query(lambda s: s.scalars(select(RoutingDecision.trigger).where(RoutingDecision.thread_id == tid)
                                       .order_by(RoutingDecision.created_at)).all())
    assert rows == ["message", "reply"]  # the addressed opening, then one routing, not one per reply


def test_a_first_reply_that_is_an_emergency_takes_the_emergency_path(routing: Routing) -> None:
    r = routing
    tid = _staff_thread(r)
    out = r.api(r.c.patient).post(f"/threads/{tid}/messages", json={"body": "now I can't breathe"})
    assert out.status_code == 201 and out.json()["auto_reply"]
    state = _state(r, tid)
    assert state is not None and state.priority == "emergency" and state.sla == "5m"
    assert _thread(r, tid).emergency


def test_the_first_reply_goes_to_the_balance_when_the_author_is_off_duty(routing: Routing) -> None:
    r = routing
    tid = _staff_thread(r)
    assert r.api(r.c.doctor).put("/routing/duty", json={"available": False}).status_code == 200
    r.api(r.c.patient).post(f"/threads/{tid}/messages", json={"body": "I've had a fever of 102 since last night"})
    thread = _thread(r, tid)
    assert thread.pool_id == "nurse-triage" and thread.assignee_id in {r.c.nurse.id, r.ned.id}


def test_a_thread_the_patient_addressed_stays_with_that_doctor_on_a_clock(
        routing: Routing, clock: FrozenClock, run_jobs: Callable[[], int]) -> None:
    r = routing
    r.on_call("nurse-triage", r.oncall_doc, clock.now(), hours=72)  # still on call when the wait runs out
    out = r.api(r.c.patient).post("/threads", json={"subject": "Hi", "body": "Quick question about my refill",
                                                    "to": ["dr.house"], "confirm_recipients": True})
    assert out.status_code == 201, out.text
    tid = out.json()["id"]
    assert out.json()["routing"]["rule"] == "addressed" and out.json()["routing"]["pool"] is None
    thread = _thread(r, tid)
    assert thread.pool_id is None and thread.assignee_id == r.c.doctor.id
    state = _state(r, tid)
    assert state is not None and state.priority == "routine" and state.sla == "2bd" and state.pending_seq == 1
    members = r.query(lambda s: set(s.scalars(select(Participant.user_id).where(Participant.thread_id == tid))))
    assert members == {r.c.patient.id, r.c.doctor.id}  # the patient chose whom to write to: no care team brought in
    # Unanswered for two business days: the ladder climbs (no pool, so no lead: the on-call physician).
    clock.advance(2 * 24 * HOUR + 60)
    run_jobs()
    escalated = r.audit("routing.thread.escalate")
    assert [a.subject_id for a in escalated] == [tid]
    members = r.query(lambda s: set(s.scalars(select(Participant.user_id).where(Participant.thread_id == tid))))
    assert r.oncall_doc.id in members


def test_an_urgent_message_addressed_to_an_absent_doctor_goes_to_someone_on_duty(routing: Routing) -> None:
    r = routing
    assert r.api(r.c.doctor).put("/routing/duty", json={"available": False}).status_code == 200
    out = r.api(r.c.patient).post("/threads", json={
        "subject": "Incision", "body": "My incision is red and warm and draining since yesterday, fever 100.8",
        "to": ["dr.house"], "confirm_recipients": True})
    assert out.status_code == 201, out.text
    tid = out.json()["id"]
    state = _state(r, tid)
    assert state is not None and state.priority == "urgent" and state.sla == "1h"
    thread = _thread(r, tid)
    assert thread.assignee_id is not None and thread.assignee_id != r.c.doctor.id


def test_the_clock_shows_answered_and_escalated_times(routing: Routing, clock: FrozenClock,
                                                      run_jobs: Callable[[], int]) -> None:
    r, c = routing, routing.c
    out = r.send(c.patient, "Question about my bill", "I was charged twice last month", urgent=True)
    tid = out["id"]
    nurse = r.api(c.nurse)
    body: dict[str, Any] = nurse.get(f"/threads/{tid}/routing/clock").json()
    assert body["waiting"] and body["priority"] == "urgent" and body["sla"] == "1h"
    assert body["answered_at"] is None and body["escalated_at"] is None and body["due_at"] is not None
    clock.advance(HOUR + 1)
    run_jobs()  # nobody read it: the pool lead hears
    escalated = clock.now()
    body = nurse.get(f"/threads/{tid}/routing/clock").json()
    assert body["step"] == 1 and body["escalations"] == 1 and body["escalated_at"] is not None
    clock.advance(60)
    assert nurse.post(f"/threads/{tid}/messages", json={"body": "Sorry for the wait, checking now."}).status_code == 201
    answered = clock.now()
    body = nurse.get(f"/threads/{tid}/routing/clock").json()  # shown at once, before the timer settles it
    assert not body["waiting"] and body["due_at"] is None and body["answered_at"] is not None
    clock.advance(HOUR)
    run_jobs()  # the timer settles the wait and stamps the answer
    state = _state(r, tid)
    assert state is not None and state.pending_seq is None
    assert state.answered_at == answered and state.escalated_at == escalated
    assert r.api(c.patient).get(f"/threads/{tid}/routing/clock").status_code == 404  # staff only


def test_a_thread_without_a_clock_says_so(routing: Routing) -> None:
    r = routing
    tid = _staff_thread(r)
    res = r.api(r.c.doctor).get(f"/threads/{tid}/routing/clock")
    assert res.status_code == 404 and res.json()["error"]
