"""Response clocks and the escalation ladder, as durable jobs: a thread whose waiting patient message
nobody on staff read, answered or claimed by its due time notifies the next tier, again and again.

Each timer is a ``routing.escalate`` job (survives restarts; the jobs table runs it once across
workers) carrying the clock's generation, so a timer armed for an earlier wait finds itself stale.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from lockbox.audit.service import record
from lockbox.db.uow import publish, runtime_of
from lockbox.directory.models import Pool, PoolMember
from lockbox.identity.models import User
from lockbox.identity.roles import Role
from lockbox.jobs import service as jobs
from lockbox.messaging.models import Message, Participant, Thread
from lockbox.routing.balance import on_call_now
from lockbox.routing.models import RoutingState
from lockbox.routing.rules import RuleSet, Sla

ESCALATE = "routing.escalate"
NOTIFY_ESCALATION = "notify.escalation"


def arm(session: Session, state: RoutingState, *, rules: RuleSet, seq: int, since: datetime) -> datetime:
    """Start the clock for the patient message ``seq`` (sent at ``since``); earlier timers go stale."""
    state.generation += 1
    state.pending_seq = seq
    state.pending_since = since
    state.step = 0
    due = rules.due(since, Sla.parse(state.sla))
    state.due_at = due
    _schedule(session, state, due)
    return due


def _schedule(session: Session, state: RoutingState, run_at: datetime) -> None:
    jobs.enqueue(session, kind=ESCALATE, run_at=run_at,
                 payload={"thread_id": state.thread_id, "generation": state.generation, "step": state.step},
                 dedupe_key=f"escalate:{state.thread_id}:{state.generation}.{state.step}")


def acknowledged_seq(session: Session, thread_id: str) -> int:
    """The newest message a staff member has read or written in the thread."""
    read = session.scalar(
        select(func.max(Participant.last_read_seq)).join(User, User.id == Participant.user_id)
        .where(Participant.thread_id == thread_id, User.role != Role.patient)) or 0
    wrote = session.scalar(
        select(func.max(Message.seq)).join(User, User.id == Message.sender_id)
        .where(Message.thread_id == thread_id, User.role != Role.patient)) or 0
    return max(int(read), int(wrote))


def answered_at(session: Session, thread_id: str, after_seq: int) -> datetime | None:
    """When a staff member first wrote in the thread after the patient message ``after_seq``."""
    answered: datetime | None = session.scalar(
        select(func.min(Message.created_at)).join(User, User.id == Message.sender_id)
        .where(Message.thread_id == thread_id, Message.seq > after_seq, User.role != Role.patient))
    return answered


def tier_people(session: Session, thread: Thread, tier: str, now: datetime) -> list[str]:
    pool = session.get(Pool, thread.pool_id) if thread.pool_id else None
    if tier == "pool_lead":
        return [pool.lead_id] if pool is not None and pool.lead_id else []
    if tier == "on_call":
        return list(dict.fromkeys(uid for _, uid in on_call_now(session, [pool.id], now))) if pool else []
    if tier == "pool":
        if pool is None:
            return []
        return list(session.scalars(select(PoolMember.user_id).join(User, User.id == PoolMember.user_id)
                                    .where(PoolMember.pool_id == pool.id, User.active.is_(True))
                                    .order_by(PoolMember.user_id)))
    if tier == "on_call_physician":
        all_pools = list(session.scalars(select(Pool.id)))
        shifts = on_call_now(session, all_pools, now)
        physicians = set(session.scalars(select(User.id).where(User.id.in_({u for _, u in shifts}),
                                                               User.role == Role.physician)))
        # The thread's own pool's physician first, then any physician on call.
        ordered = [u for p, u in shifts if u in physicians and p == thread.pool_id]
        ordered += [u for _, u in shifts if u in physicians]
        return list(dict.fromkeys(ordered))
    return []


def bring_in(session: Session, thread_id: str, user_ids: list[str], now: datetime) -> None:
    """Whoever is paged or escalated to joins the thread as a member, so they can open it."""
    if not user_ids:
        return
    present = dict(session.execute(select(Participant.user_id, Participant.kind)
                                   .where(Participant.thread_id == thread_id, Participant.user_id.in_(user_ids))).all())
    new = [u for u in user_ids if u not in present]
    if new:
        session.execute(insert(Participant), [
            {"thread_id": thread_id, "user_id": u, "kind": "member", "joined_at": now, "last_read_seq": 0,
             "last_delivered_seq": 0} for u in new])
    upgrade = [u for u, kind in present.items() if kind != "member"]
    if upgrade:
        session.execute(update(Participant).where(Participant.thread_id == thread_id,
                                                  Participant.user_id.in_(upgrade))
                        .values(kind="member").execution_options(synchronize_session=False))


def fire(session: Session, payload: dict[str, Any], *, rules: RuleSet) -> str:
    """The ``routing.escalate`` handler's work; returns what it did (for tests and logs)."""
    thread_id = str(payload["thread_id"])
    # Locked: a patient's reply stored meanwhile by another process is then seen here, or sees this
    # (``routing.service.CLOCK_OF_THREAD``).
    state = session.get(RoutingState, thread_id, with_for_update=True)
    thread = session.get(Thread, thread_id)
    if state is None or thread is None or state.generation != int(payload["generation"]) \
            or state.step != int(payload["step"]) or state.pending_seq is None:
        return "stale"
    now = runtime_of(session).clock.now()
    if thread.status != "open":
        state.pending_seq = state.pending_since = state.due_at = None
        return "closed"
    ack = acknowledged_seq(session, thread_id)
    claimed = state.acknowledged_at is not None and state.pending_since is not None \
        and state.acknowledged_at >= state.pending_since
    if ack >= state.pending_seq or claimed:
        answered = answered_at(session, thread_id, state.pending_seq)
        if answered is not None:
            state.answered_at = answered
        # Answered: if the patient wrote again since, that message's own clock starts now.
        newer = session.execute(
            select(Message.seq, Message.created_at)
            .where(Message.thread_id == thread_id, Message.sender_id == thread.patient_id,
                   Message.seq > max(ack, state.pending_seq))
            .order_by(Message.seq).limit(1)).first()
        if newer is not None and thread.patient_id is not None:
            arm(session, state, rules=rules, seq=int(newer[0]), since=newer[1])
            return "rearmed"
        state.pending_seq = state.pending_since = state.due_at = None
        return "acknowledged"

    ladder = state.ladder or list(rules.escalation)
    step = state.step
    people: list[str] = []
    tier = ladder[min(step, len(ladder) - 1)]
    # An empty tier (no lead, nobody on call) hands straight on to the next one.
    for i in range(min(step, len(ladder) - 1), len(ladder)):
        tier = ladder[i]
        people = tier_people(session, thread, tier, now)
        if people:
            break
    bring_in(session, thread_id, people, now)
    for uid in people:
        jobs.enqueue(session, kind=NOTIFY_ESCALATION, payload={"user_id": uid, "thread_id": thread_id, "tier": tier},
                     dedupe_key=f"notify.escalation:{thread_id}:{state.generation}.{step}:{uid}")
    publish(session, people, {"type": "escalation", "thread_id": thread_id, "tier": tier})
    record(session, action="routing.thread.escalate", subject_type="thread", subject_id=thread_id, tier=tier,
           step=step, generation=state.generation, recipients=people, pool=thread.pool_id)
    state.step = step + 1
    state.escalations += 1
    state.escalated_at = now
    again = rules.due(now, Sla.parse(state.sla))
    state.due_at = again
    _schedule(session, state, again)
    return f"escalated:{tier}"
