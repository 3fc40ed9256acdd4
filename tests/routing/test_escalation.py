"""Escalation timers: an unanswered thread climbs the ladder (pool lead, then the on-call physician) and
keeps notifying until a staff member reads, answers or claims it; timers survive a restart and fire
once however many workers race for them."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import select

from lockbox.app import build_database
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.jobs.models import Job
from lockbox.jobs.worker import Worker
from lockbox.routing.models import RoutingState
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
