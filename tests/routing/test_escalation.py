"""Escalation timers: an unanswered thread climbs the ladder (pool lead, then the on-call physician) and
keeps notifying until a staff member reads, answers or claims it; timers survive a restart and fire
once however many workers race for them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.app import build_database
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.identity.roles import Role
from lockbox.jobs.models import Job
from lockbox.jobs.worker import Worker
from lockbox.messaging import service as messaging
from lockbox.routing import escalation
from lockbox.routing.models import RoutingState
from lockbox.routing.service import rules_for
from tests.routing.conftest import Routing

BILL = ("Question about my bill", "I was charged twice for my visit last month, can someone check my invoice?")
HOUR = 3600


def _urgent(r: Routing) -> str:
    out = r.send(r.c.patient, *BILL, urgent=True)  # urgent: SLA one hour, nurse triage
    assert out["routing"]["urgency"] == "urgent" and out["routing"]["pool"] == "nurse-triage"
    return out["id"]  # type: ignore[no-any-return]


def _notified(r: Routing) -> list[tuple[str, str]]:
    return [(j.payload["user_id"], j.payload["tier"]) for j in r.jobs("notify.escalation")]


def test_the_ladder_climbs_and_repeats_until_someone_reads(routing: Routing, clock: FrozenClock,
                                                           run_jobs: Callable[[], int]) -> None:
    r, c = routing, routing.c
    tid = _urgent(r)
    clock.advance(HOUR - 1)
    run_jobs()
    assert _notified(r) == []
    clock.advance(2)
    run_jobs()
    assert _notified(r) == [(r.lead.id, "pool_lead")]
    clock.advance(HOUR)
    run_jobs()
    assert _notified(r)[-1] == (r.oncall_doc.id, "on_call_physician")
    assert r.api(r.oncall_doc).get(f"/threads/{tid}").status_code == 200  # brought in
    clock.advance(HOUR)
    run_jobs()
    assert _notified(r)[-1] == (r.oncall_doc.id, "on_call_physician")  # again and again
    escalations = r.audit("routing.thread.escalate")
    assert [e.details["tier"] for e in escalations] == ["pool_lead", "on_call_physician", "on_call_physician"]
    assert all(e.subject_id == tid for e in escalations)
    # A nurse reads it: the ladder stops.
    assert r.api(c.nurse).post(f"/threads/{tid}/read").status_code == 204
    clock.advance(HOUR)
    run_jobs()
    assert len(_notified(r)) == 3
    state = r.query(lambda s: s.get(RoutingState, tid))
    assert state.pending_seq is None and state.escalations == 3


def test_an_answer_in_time_means_no_escalation_and_the_next_message_rearms(
        routing: Routing, clock: FrozenClock, run_jobs: Callable[[], int]) -> None:
    r, c = routing, routing.c
    tid = _urgent(r)
    clock.advance(600)
    assert r.api(c.nurse).post(f"/threads/{tid}/messages", json={"body": "Looking into it."}).status_code == 201
    clock.advance(HOUR)
    run_jobs()
    assert _notified(r) == []
    r.api(c.patient).post(f"/threads/{tid}/messages", json={"body": "Thank you, any news?"})
    clock.advance(HOUR + 1)
    run_jobs()
    assert _notified(r) == [(r.lead.id, "pool_lead")]


def test_claiming_acknowledges(routing: Routing, clock: FrozenClock, run_jobs: Callable[[], int]) -> None:
    r = routing
    tid = _urgent(r)
    r.api(r.ned).post(f"/threads/{tid}/claim")
    clock.advance(HOUR + 1)
    run_jobs()
    assert _notified(r) == []


def test_a_message_answered_before_a_later_one_rearms_for_the_later(
        routing: Routing, clock: FrozenClock, run_jobs: Callable[[], int]) -> None:
    r, c = routing, routing.c
    tid = _urgent(r)
    clock.advance(60)
    r.api(c.nurse).post(f"/threads/{tid}/read")
    clock.advance(60)
    r.api(c.patient).post(f"/threads/{tid}/messages", json={"body": "One more thing about the invoice."})
    clock.advance(HOUR - 60)  # the first timer fires: the first message was read, the second waits
    run_jobs()
    assert _notified(r) == []
    clock.advance(120)  # an hour after the second message
    run_jobs()
    assert _notified(r) == [(r.lead.id, "pool_lead")]


def test_closed_threads_do_not_escalate(routing: Routing, clock: FrozenClock, run_jobs: Callable[[], int]) -> None:
    r, c = routing, routing.c
    tid = _urgent(r)
    assert r.api(c.nurse).post(f"/threads/{tid}/close").status_code == 204
    clock.advance(HOUR + 1)
    run_jobs()
    assert _notified(r) == []


def test_a_timer_survives_a_restart(routing: Routing, clock: FrozenClock, db: Database, settings: Settings) -> None:
    r = routing
    tid = _urgent(r)
    db.close()  # the process goes away with its timer pending
    clock.advance(HOUR + 1)
    again = build_database(settings, clock=clock)
    worker = Worker(again, name="after-restart")
    try:
        assert worker.run_once() >= 1
        notified = again.read_sync(lambda s: [j.payload for j in s.scalars(
            select(Job).where(Job.kind == "notify.escalation"))])
        assert notified == [{"user_id": r.lead.id, "thread_id": tid, "tier": "pool_lead"}]
    finally:
        worker.stop()
        again.close()


def test_two_workers_race_for_one_timer(routing: Routing, clock: FrozenClock, settings: Settings) -> None:
    r = routing
    tid = _urgent(r)
    clock.advance(HOUR + 1)
    dbs = [build_database(settings, clock=clock) for _ in range(2)]
    workers = [Worker(d, name=f"racer-{i}") for i, d in enumerate(dbs)]
    start = threading.Barrier(2)
    ran: list[int] = []

    def _go(w: Worker) -> None:
        start.wait()
        ran.append(w.run_once())

    threads = [threading.Thread(target=_go, args=(w,)) for w in workers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for w in workers:
            w.stop()
        for d in dbs:
            d.close()
    assert sum(ran) >= 1
    assert _notified(r) == [(r.lead.id, "pool_lead")]
    assert [e.subject_id for e in r.audit("routing.thread.escalate")] == [tid]


# -- another process's writer, mid-batch (PostgreSQL: SQLite runs one write transaction at a time) ----------


def _held_unit(db: Database) -> tuple[Connection, Session]:
    """A unit of work left open, as another server process's writer holds its batch until COMMIT."""
    conn = db.write_engine.connect()
    conn.begin()
    session = Session(bind=conn)
    session.info["runtime"] = db.runtime
    return conn, session


def _due_timer(r: Routing, tid: str) -> dict[str, object]:
    state = r.query(lambda s: s.get(RoutingState, tid))
    return {"thread_id": tid, "generation": state.generation, "step": state.step}


def _fire(session: Session, payload: dict[str, object]) -> str:
    return escalation.fire(session, payload, rules=rules_for(session))


def _read_then_due(r: Routing, clock: FrozenClock, backend: str) -> str:
    """A thread a nurse has read (acknowledged, not answered) whose timer is due."""
    if backend == "sqlite":
        pytest.skip("SQLite runs one write transaction at a time: a reply and a timer cannot interleave")
    tid = _urgent(r)
    assert r.api(r.c.nurse).post(f"/threads/{tid}/read").status_code == 204
    clock.advance(HOUR + 1)
    return tid


def test_a_reply_while_another_process_stops_the_clock_starts_it_again(
        routing: Routing, clock: FrozenClock, db: Database, backend: str) -> None:
    r = routing
    tid = _read_then_due(r, clock, backend)
    conn, timer = _held_unit(db)
    replies: list[Any] = []
    try:
        assert _fire(timer, _due_timer(r, tid)) == "acknowledged"  # the nurse read it: the clock stops
        timer.flush()
        reply = threading.Thread(target=lambda: replies.append(
            r.api(r.c.patient).post(f"/threads/{tid}/messages", json={"body": "It is worse now."})))
        reply.start()
        reply.join(1.0)  # the reply waits for the timer's transaction
        conn.commit()
        reply.join(30)
    finally:
        conn.close()
    assert replies and replies[0].status_code == 201
    state = r.query(lambda s: s.get(RoutingState, tid))
    assert state.pending_seq == replies[0].json()["seq"]  # the patient waits again, on a running clock


def test_a_timer_firing_while_another_process_stores_a_reply_sees_the_reply(
        routing: Routing, clock: FrozenClock, db: Database, backend: str) -> None:
    r = routing
    tid = _read_then_due(r, clock, backend)
    patient = Actor(r.c.patient.id, r.c.patient.username, Role.patient, "Pat")
    payload = _due_timer(r, tid)
    conn, writer = _held_unit(db)
    outcomes: list[str] = []
    try:
        sent = messaging.reply(writer, actor=patient, thread_id=tid, body="It is worse now.")
        writer.flush()
        timer = threading.Thread(target=lambda: outcomes.append(db.write_sync(_fire, payload=payload)))
        timer.start()
        timer.join(1.0)  # the timer waits for the reply's transaction
        conn.commit()
        timer.join(30)
    finally:
        conn.close()
    assert outcomes == ["rearmed"]
    assert r.query(lambda s: s.get(RoutingState, tid)).pending_seq == sent.seq
