"""The routing engine (ARCHITECTURE section 6): filter (classify), rules and balance (pool, then responder),
context (the patient's care facts); the emergency path; claim, release and transfer; duty.

Decisions are returned to messaging, which writes the thread; ``record_decision`` then stores the
decision with its phases and performs its effects (response clock, call-back task, page) in the
same unit of work. Explanations, audit details and job payloads carry codes and ids only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, event, func, select
from sqlalchemy.orm import Session

from lockbox.access import policy
from lockbox.access.actor import Actor
from lockbox.audit.models import Alert
from lockbox.audit.service import raise_alert, record
from lockbox.db.prepared import Prepared
from lockbox.db.uow import publish, runtime_of
from lockbox.directory.models import CareTeamMember, Pool, PoolMember
from lockbox.errors import Forbidden, InvalidInput, NotFound
from lockbox.identity.models import User
from lockbox.identity.roles import CLINICAL_ROLES, NO_CONTENT_ROLES, Role
from lockbox.jobs import service as jobs
from lockbox.messaging.models import Thread
from lockbox.routing import balance, escalation, schemas
from lockbox.routing.context import PatientContext, provider_for
from lockbox.routing.models import CallbackTask, Responder, RoutingDecision, RoutingState
from lockbox.routing.rules import WEEKDAYS, CompiledRule, Facts, RuleSet, RuleStore, store_for

if TYPE_CHECKING:
    from lockbox.routing.classify import Triage

NOTIFY_PAGE = "notify.page"
DUTY_SWEEP = "routing.duty_sweep"
DUTY_SWEEP_S = 300
_PRIORITY = {"routine": 0, "urgent": 1, "emergency": 2}

AUTO_REPLY = {
    "en": ("This secure message center is not for emergencies. If this is an emergency, call 911 now or go to "
           "the nearest emergency department. A nurse has been alerted and will call you back."),
    "es": ("Este centro de mensajes seguros no es para emergencias. Si se trata de una emergencia, llame al 911 "
           "ahora o vaya al departamento de emergencias más cercano. Se ha avisado a una enfermera, que le "
           "devolverá la llamada."),
}


@dataclass(frozen=True)
class Decision:
    urgency: str
    topic: str
    pool_id: str | None
    assignee_id: str | None
    rule: str
    explanation: str
    emergency: bool = False
    auto_reply: str | None = None
    # The engine's own decisions (not "addressed") start a response clock and, for emergencies, a
    # call-back task and a page.
    routed: bool = False
    trigger: str = "message"
    seq: int = 1
    sla: str | None = None
    ladder: tuple[str, ...] = ()
    emergency_pool: str | None = None
    # Without a pool the care team joins the thread; not when the patient chose whom to write to.
    team_joins: bool = True
    phases: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def rules_for(session: Session, *, alerts: bool = True) -> RuleSet:
    """The rules in force; a pending bad-file alert is raised in this unit unless it is a read."""
    store = store_for(runtime_of(session).settings.routing_rules)
    rules = store.current()
    if alerts and store.pending_alerts:
        _raise_rule_alerts(session, store)
    return rules


def _raise_rule_alerts(session: Session, store: RuleStore) -> None:
    """A bad rules file is noticed on a decision path; its alert is written by the unit at hand, and put
    back for the next one if this unit rolls back."""
    alerts = store.take_alerts()
    if not alerts:
        return
    event.listen(session, "after_soft_rollback", lambda *_: store.restore_alerts(alerts), once=True)
    raise_rule_alerts(session, rules_file=store.path.name, alerts=alerts)


def raise_rule_alerts(session: Session, *, rules_file: str, alerts: list[tuple[int, list[str]]]) -> None:
    """The alerts of refused versions of a rules file; also the watcher's unit of work (routing.watch), when no
    message is on its way (it puts them back in its store if this fails)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", rules_file)[:80]
    for mtime, problems in alerts:
        # Every process watching the file notices the same bad version: one alert for it, not one each.
        version = f"{name}:{mtime}"[:64]
        if session.scalar(select(Alert.id).where(Alert.kind == "routing_rules_invalid",
                                                 Alert.subject_type == "routing_rules",
                                                 Alert.subject_id == version).limit(1)) is not None:
            continue
        raise_alert(session, kind="routing_rules_invalid", subject_type="routing_rules", subject_id=version,
                    rules_file=name, problems=len(problems))


# -- phases --------------------------------------------------------------------------------------


def _days_since(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else max(0, (now - then).days)


def _facts(rules: RuleSet, now: datetime, urgency: str, triage: Triage, ctx: PatientContext,
           care_team_id: str | None) -> Facts:
    local = rules.local(now)
    return Facts(
        urgency=urgency, topic=triage.topic, language=triage.language, sender_role="patient",
        care_team=care_team_id, location=ctx.location_id, conditions=ctx.conditions,
        days_since_surgery=_days_since(now, ctx.last_surgery_at),
        days_since_encounter=_days_since(now, ctx.last_encounter_at),
        local_time=local.time(), weekday=WEEKDAYS[local.weekday()], clinic_open=rules.is_open(ctx.location_id, now),
        holiday=rules.is_holiday(ctx.location_id, now),
    )


def _decide(session: Session, *, rules: RuleSet, now: datetime, urgency: str, triage: Triage, ctx: PatientContext,
            care_team_id: str | None, trigger: str, seq: int, keep_assignee: str | None = None,
            current_pool: str | None = None, pool_override: str | None = None, prefer: str | None = None,
            addressed: bool = False) -> Decision:
    """``prefer``: the person the conversation is with, who takes it when on duty. ``addressed``: the patient
    chose the recipients, so no rule picks a pool (the SLA and ladder are the defaults for the urgency)."""
    facts = _facts(rules, now, urgency, triage, ctx, care_team_id)
    rule: CompiledRule | None = None if addressed else rules.first_match(facts)
    emergency = urgency == "emergency"
    wanted = rule.pool if rule is not None else (rules.emergency_pool if emergency else None)
    if pool_override is not None or addressed:
        wanted = pool_override
    pool = session.get(Pool, wanted) if wanted else None
    fallback = pool is None and not addressed
    rule_name = "addressed" if addressed else rule.name if rule is not None else "no-rule"

    if keep_assignee is not None and pool is not None and pool.id == current_pool:
        pick = balance.Pick(keep_assignee, "kept", 1, 1)
    elif prefer is not None and balance.is_eligible(session, rules=rules, now=now, user_id=prefer,
                                                    pool_id=pool.id if pool else None):
        pick = balance.Pick(prefer, "addressed", 1, 1)
    else:
        people = balance.candidates(session, rules=rules, now=now, pool=pool, care_team_id=care_team_id,
                                    location_id=ctx.location_id)
        pick = balance.choose(people)
    sla = rules.sla_for(rule, urgency)
    where = f"pool {pool.id}" if pool is not None else "the patient's care team"
    if fallback and wanted:
        where += f" (pool {wanted} does not exist)"
    if addressed and pool is None:
        where = "the staff the patient wrote to"
    who = {"addressed": "assigned to the staff member the conversation is with",
           "care_team": "assigned within the care team", "least_load": "assigned to the least-loaded responder",
           "on_call": "assigned to the on-call responder", "kept": "assignee kept",
           "nobody_eligible": "nobody eligible on duty: left in the queue",
           "no_candidates": "no responders: left in the queue"}[pick.reason]
    how = "addressed by the patient, kept with" if addressed else f"rule {rule_name} sent it to"
    explanation = f"{urgency.capitalize()} {triage.topic}: {how} {where}; {who}."
    if emergency:
        explanation = "Emergency: auto-reply sent, call-back task and on-call page raised. " + explanation
    phases = {
        "filter": {"urgency": urgency, "classified": triage.urgency, "topic": triage.topic,
                   "language": triage.language, "signals": len(triage.signals)},
        "rules": {"rule": rule_name, "pool": pool.id if pool else None, "wanted": wanted, "fallback": fallback,
                  "sla": sla.text, "ladder": list(rules.ladder_for(rule)), "source": rules.source},
        "balance": {"assignee": pick.assignee_id, "reason": pick.reason, "candidates": pick.candidates,
                    "eligible": pick.eligible},
        "context": {"source": ctx.source, "care_team": care_team_id, "location": ctx.location_id,
                    "conditions": len(ctx.conditions), "recent_surgery": ctx.last_surgery_at is not None},
    }
    lang = triage.language if triage.language in AUTO_REPLY else "en"
    return Decision(
        urgency=urgency, topic=triage.topic, pool_id=pool.id if pool else None, assignee_id=pick.assignee_id,
        rule=rule_name, explanation=explanation[:300], emergency=emergency,
        auto_reply=AUTO_REPLY[lang] if emergency else None, routed=True, trigger=trigger, seq=seq, sla=sla.text,
        ladder=rules.ladder_for(rule), emergency_pool=rules.emergency_pool, team_joins=not addressed,
        phases=phases,
    )


def route_patient_message(
    session: Session, *, patient_id: str, care_team_id: str | None, subject: str, body: str, urgent: bool
) -> Decision:
    """A new patient thread: classify, pick the pool by the rules, the responder by balance."""
    rt = runtime_of(session)
    now = rt.clock.now()
    rules = rules_for(session)
    from lockbox.routing.classify import classify

    triage = classify(subject, body)
    urgency = triage.urgency
    if urgent and urgency == "routine":
        urgency = "urgent"  # the patient's own flag raises, never lowers
    ctx = provider_for(rt.settings).patient_context(session, patient_id=patient_id)
    return _decide(session, rules=rules, now=now, urgency=urgency, triage=triage, ctx=ctx,
                   care_team_id=care_team_id or ctx.care_team_id, trigger="message", seq=1)


def screen_addressed(session: Session, decision: Decision, *, patient_id: str, care_team_id: str | None,
                     subject: str, body: str, addressed_to: list[str] | None = None, urgent: bool = False) -> Decision:
    """A patient's thread addressed to named staff (or a pool) is not routed elsewhere, but it is triaged: an
    emergency is routed like any other (auto-reply, call-back, page); anything else stays with the staff the
    patient wrote to (or the pool's balance), on the response clock of its urgency, so it escalates when
    nobody answers (a doctor away for a week must not leave a patient's question unseen)."""
    from lockbox.routing.classify import classify

    rt = runtime_of(session)
    ctx = provider_for(rt.settings).patient_context(session, patient_id=patient_id)
    triage = classify(subject, body)  # one pass: an emergency is found here as in any new message
    if triage.urgency == "emergency":
        return _decide(session, rules=rules_for(session), now=rt.clock.now(), urgency="emergency", triage=triage,
                       ctx=ctx, care_team_id=care_team_id or ctx.care_team_id, trigger="message", seq=1)
    urgency = "urgent" if urgent and triage.urgency == "routine" else triage.urgency
    prefer = next((u for u in addressed_to or () if _clinician(session, u)), None)
    return _decide(session, rules=rules_for(session), now=rt.clock.now(), urgency=urgency, triage=triage, ctx=ctx,
                   care_team_id=care_team_id or ctx.care_team_id, trigger="message", seq=1,
                   pool_override=decision.pool_id, prefer=prefer, addressed=True)


def _clinician(session: Session, user_id: str | None) -> bool:
    """Staff who may answer a patient's message (not a patient, not a no-content role), active."""
    if user_id is None:
        return False
    row = session.execute(select(User.role, User.active).where(User.id == user_id)).first()
    return row is not None and row[1] and row[0] != Role.patient and row[0] not in NO_CONTENT_ROLES


class _Unscreened:
    """No emergency check has run on the text yet (``None`` is a check that found no emergency)."""

    def __repr__(self) -> str:
        return "UNSCREENED"

    def __reduce__(self) -> str:
        # To the writer process and back as the module's one instance: callers compare with ``is``.
        return "UNSCREENED"


UNSCREENED: Any = _Unscreened()
# The caller has not read the thread's response clock (else: its row with ``pending_seq``, or None).
UNREAD: Any = object()
_routing_states = cast(Table, RoutingState.__table__)
# A patient's reply reads the response clock locked (PostgreSQL; SQLite runs one write transaction at a time),
# as the escalation timer does (``escalation.fire``): else a timer settling the clock in another process's
# batch, not yet committed, and a reply it cannot see yet would each leave the other's change out, and the
# reply would wait on no clock.
CLOCK_OF_THREAD = select(_routing_states.c.pending_seq).where(_routing_states.c.thread_id == bindparam("b_thread")) \
    .with_for_update(key_share=True)
_CLOCK = Prepared(CLOCK_OF_THREAD)


def route_patient_reply(
    session: Session, *, thread_id: str, patient_id: str, body: str, seq: int | None = None,
    screened: Triage | None = UNSCREENED, clock: Any = UNREAD,
) -> Decision | None:
    """A patient's reply pays only for the emergency check. An emergent reply re-triages the thread
    (returned as a Decision with its auto-reply); any other reply only restarts a stopped response clock.
    ``screened``: ``emergency_check(body)`` already run elsewhere (``routing.screening``), else it runs here;
    ``clock``: the thread's response clock (``pending_seq``) or None, when the caller's statement read it."""
    if screened is UNSCREENED:
        from lockbox.routing.classify import emergency_check

        triage = emergency_check(body)
    else:
        triage = screened
    now = runtime_of(session).clock.now()
    if triage is None:
        # Most replies find a clock already running: one prepared read, no ORM object.
        if clock is UNREAD:
            clock = _CLOCK.first(session, b_thread=thread_id)
        if clock is None and seq is not None:
            return route_first_reply(session, thread_id=thread_id, patient_id=patient_id, body=body, seq=seq)
        if clock is not None and clock.pending_seq is None and seq is not None:
            state = session.get(RoutingState, thread_id)
            if state is not None:
                escalation.arm(session, state, rules=rules_for(session), seq=seq, since=now)
        return None
    state = session.get(RoutingState, thread_id, with_for_update=True)  # see CLOCK_OF_THREAD
    thread = session.get(Thread, thread_id)
    if thread is None:
        return None
    if thread.emergency and _open_callback(session, thread_id) is not None:
        if state is not None and state.pending_seq is None and seq is not None:
            escalation.arm(session, state, rules=rules_for(session), seq=seq, since=now)
        return None  # already at the top of the triage queue with a call-back waiting
    rt = runtime_of(session)
    rules = rules_for(session)
    ctx = provider_for(rt.settings).patient_context(session, patient_id=patient_id)
    decision = _decide(session, rules=rules, now=now, urgency="emergency", triage=triage, ctx=ctx,
                       care_team_id=thread.care_team_id or ctx.care_team_id, trigger="reply", seq=seq or 1,
                       keep_assignee=thread.assignee_id, current_pool=thread.pool_id)
    thread.emergency = True
    thread.urgent = True
    if decision.pool_id is not None:
        thread.pool_id = decision.pool_id
    if decision.assignee_id != thread.assignee_id and decision.assignee_id is not None:
        thread.assignee_id = decision.assignee_id
    return decision


def route_first_reply(session: Session, *, thread_id: str, patient_id: str, body: str, seq: int) -> Decision | None:
    """A patient's first reply in a thread staff started (it has no response clock): the patient now waits for
    an answer, so the reply is triaged and routed like a new message (the rules' pool, SLA and ladder, the
    balance's responder). A pool or assignee the thread already has is kept; the staff who wrote stay members.
    The staff member who wrote takes the answer when on duty (the conversation is with them); otherwise the
    balance picks. A thread the patient started has its own clock already (None)."""
    thread = session.get(Thread, thread_id)
    if thread is None or thread.patient_id != patient_id or thread.created_by == patient_id:
        return None
    from lockbox.routing.classify import classify

    triage = classify("", body)
    rt = runtime_of(session)
    ctx = provider_for(rt.settings).patient_context(session, patient_id=patient_id)
    decision = _decide(session, rules=rules_for(session), now=rt.clock.now(), urgency=triage.urgency, triage=triage,
                       ctx=ctx, care_team_id=thread.care_team_id or ctx.care_team_id, trigger="reply", seq=seq,
                       keep_assignee=thread.assignee_id, current_pool=thread.pool_id, pool_override=thread.pool_id,
                       prefer=thread.created_by if _clinician(session, thread.created_by) else None)
    if thread.pool_id is None and decision.pool_id is not None:
        thread.pool_id = decision.pool_id
    if thread.assignee_id is None and decision.assignee_id is not None:
        thread.assignee_id = decision.assignee_id
    thread.urgent = thread.urgent or decision.urgency != "routine"
    thread.emergency = thread.emergency or decision.emergency
    return decision


def record_decision(session: Session, *, thread_id: str, message_id: str | None, decision: Decision) -> RoutingDecision:
    """Store the decision and, for the engine's own decisions, start the response clock, raise the
    emergency call-back and page, and tell the assignee."""
    rt = runtime_of(session)
    now = rt.clock.now()
    row = RoutingDecision(
        thread_id=thread_id, message_id=message_id, urgency=decision.urgency, topic=decision.topic,
        pool_id=decision.pool_id, assignee_id=decision.assignee_id, rule=decision.rule,
        explanation=decision.explanation, created_at=now, trigger=decision.trigger, phases=decision.phases,
    )
    session.add(row)
    if not decision.routed:
        return row
    session.flush()
    rules = rules_for(session)
    state = session.get(RoutingState, thread_id)
    if state is None:
        state = RoutingState(thread_id=thread_id, priority=decision.urgency, rule=decision.rule,
                             sla=decision.sla or rules.sla[decision.urgency].text,
                             ladder=list(decision.ladder or rules.escalation), generation=0, step=0, escalations=0)
        session.add(state)
        escalation.arm(session, state, rules=rules, seq=decision.seq, since=now)
    elif _PRIORITY[decision.urgency] > _PRIORITY.get(state.priority, 0) or state.pending_seq is None:
        # A tighter priority (a reply turned emergent) restarts the clock on the new SLA.
        state.priority, state.rule = decision.urgency, decision.rule
        state.sla = decision.sla or rules.sla[decision.urgency].text
        state.ladder = list(decision.ladder or rules.escalation)
        escalation.arm(session, state, rules=rules, seq=decision.seq, since=now)
    if decision.pool_id is None and decision.team_joins:
        _care_team_takes_it(session, thread_id, now)
    if decision.assignee_id:
        balance.note_assignment(session, decision.assignee_id, now)
        publish(session, [decision.assignee_id], {"type": "assignment", "thread_id": thread_id})
        _arm_duty_sweep(session, now)
    record(session, action="routing.thread.route", subject_type="thread", subject_id=thread_id,
           decision_id=row.id, trigger=decision.trigger, rule=decision.rule, pool=decision.pool_id,
           assignee=decision.assignee_id, fallback=decision.phases.get("rules", {}).get("fallback", False))
    if decision.emergency:
        _emergency(session, thread_id=thread_id, pool_id=decision.emergency_pool or rules.emergency_pool, now=now)
    return row


def _care_team_takes_it(session: Session, thread_id: str, now: datetime) -> None:
    """Without a pool there is no queue to watch: the care team joins the thread, so each new message
    reaches them (push and notification) as it would reach a pool."""
    team = session.scalar(select(Thread.care_team_id).where(Thread.id == thread_id))
    if team is None:
        return
    staff = list(session.scalars(
        select(User.id).join(CareTeamMember, CareTeamMember.user_id == User.id)
        .where(CareTeamMember.care_team_id == team, User.active.is_(True), User.role != Role.patient,
               User.role.not_in([r.value for r in NO_CONTENT_ROLES]))))
    escalation.bring_in(session, thread_id, staff, now)


def _open_callback(session: Session, thread_id: str) -> CallbackTask | None:
    return session.scalar(select(CallbackTask).where(CallbackTask.thread_id == thread_id,
                                                     CallbackTask.completed_at.is_(None)).limit(1))


def _emergency(session: Session, *, thread_id: str, pool_id: str, now: datetime) -> None:
    pool = session.get(Pool, pool_id)
    task = CallbackTask(thread_id=thread_id, pool_id=pool.id if pool else None, reason="emergency",
                        created_at=now, due_at=now)
    session.add(task)
    session.flush()
    paged = [uid for _, uid in balance.on_call_now(session, [pool_id], now)] if pool else []
    if not paged and pool is not None and pool.lead_id:
        paged = [pool.lead_id]  # nobody on call: the pool's lead is the last person who must know
    paged = list(dict.fromkeys(paged))
    escalation.bring_in(session, thread_id, paged, now)
    for uid in paged:
        jobs.enqueue(session, kind=NOTIFY_PAGE, payload={"user_id": uid, "thread_id": thread_id, "reason": "emergency"},
                     dedupe_key=f"page:{thread_id}:{task.id}:{uid}")
    members = list(session.scalars(select(PoolMember.user_id).where(PoolMember.pool_id == pool_id))) if pool else []
    publish(session, set(paged) | set(members), {"type": "emergency", "thread_id": thread_id, "callback_id": task.id})
    record(session, action="routing.emergency.raise", subject_type="thread", subject_id=thread_id,
           callback_id=task.id, pool=task.pool_id, paged=paged)


def _arm_duty_sweep(session: Session, now: datetime) -> None:
    slot = (int(now.timestamp()) // DUTY_SWEEP_S + 1) * DUTY_SWEEP_S
    jobs.enqueue(session, kind=DUTY_SWEEP, payload={"slot": slot},
                 run_at=datetime.fromtimestamp(slot, tz=now.tzinfo), dedupe_key=f"routing.duty:{slot}")


def open_callbacks(session: Session, thread_ids: list[str]) -> dict[str, datetime]:
    """Thread id -> when its open call-back is due, for the queues."""
    if not thread_ids:
        return {}
    rows = session.execute(select(CallbackTask.thread_id, CallbackTask.due_at)
                           .where(CallbackTask.thread_id.in_(thread_ids), CallbackTask.completed_at.is_(None)))
    out: dict[str, datetime] = {}
    for tid, due in rows:
        out[tid] = min(due, out.get(tid, due))
    return out


# -- staff actions: claim, release, transfer, call-back, duty ------------------------------------


def _latest(session: Session, thread_id: str) -> RoutingDecision | None:
    return session.scalar(select(RoutingDecision).where(RoutingDecision.thread_id == thread_id)
                          .order_by(RoutingDecision.created_at.desc(), RoutingDecision.id.desc()).limit(1))


def _may_take(session: Session, user_id: str, thread: Thread) -> bool:
    """A pool's thread is for its members and lead; a thread without a pool, for its care team."""
    if thread.pool_id is not None:
        pool = session.get(Pool, thread.pool_id)
        if pool is not None and pool.lead_id == user_id:
            return True
        return session.get(PoolMember, (thread.pool_id, user_id)) is not None
    if thread.care_team_id is not None:
        return session.get(CareTeamMember, (thread.care_team_id, user_id)) is not None
    return False


def _staff_thread(session: Session, actor: Actor, thread_id: str) -> Thread:
    thread = policy.thread_for_write(session, actor, thread_id)
    policy.require_staff(actor)
    return thread


def _reassign(session: Session, thread: Thread, new: str | None, *, trigger: str, explanation: str,
              actor: Actor | None, now: datetime, **details: Any) -> schemas.Assignment:
    previous = thread.assignee_id
    thread.assignee_id = new
    last = _latest(session, thread.id)
    urgency = last.urgency if last else ("urgent" if thread.urgent else "routine")
    row = RoutingDecision(
        thread_id=thread.id, message_id=None, urgency=urgency, topic=last.topic if last else "other",
        pool_id=thread.pool_id, assignee_id=new, rule=trigger,
        explanation=explanation, created_at=now, trigger=trigger,
        phases={"balance": {"assignee": new, "previous": previous, "reason": trigger, **details}})
    session.add(row)
    session.flush()
    if new is not None:
        balance.note_assignment(session, new, now)
        _arm_duty_sweep(session, now)
    record(session, action=f"routing.thread.{trigger}", actor=actor,
           subject_type="thread", subject_id=thread.id, decision_id=row.id, previous=previous, assignee=new,
           pool=thread.pool_id)
    concerned = {u for u in (previous, new, actor.user_id if actor else None) if u}
    pool = session.get(Pool, thread.pool_id) if thread.pool_id else None
    if pool is not None:
        # Everyone watching the pool's queue sees who took the thread, so nobody answers it twice.
        concerned |= set(session.scalars(select(PoolMember.user_id).where(PoolMember.pool_id == pool.id)))
        if pool.lead_id:
            concerned.add(pool.lead_id)
    publish(session, concerned, {"type": "assignment", "thread_id": thread.id, "assignee": new})
    return _assignment(session, thread)


def _assignment(session: Session, thread: Thread) -> schemas.Assignment:
    username = None
    if thread.assignee_id:
        username = session.scalar(select(User.username).where(User.id == thread.assignee_id))
    return schemas.Assignment(thread_id=thread.id, pool=thread.pool_id, assignee=username)


def _acknowledge(session: Session, thread_id: str, now: datetime) -> None:
    state = session.get(RoutingState, thread_id)
    if state is not None:
        state.acknowledged_at = now


def claim(session: Session, *, actor: Actor, thread_id: str) -> schemas.Assignment:
    """Take a thread from the queue (or from a colleague); it counts as acknowledging it."""
    thread = _staff_thread(session, actor, thread_id)
    if not _may_take(session, actor.user_id, thread):
        raise Forbidden("Only the thread's pool or care team can claim it.")
    now = runtime_of(session).clock.now()
    _acknowledge(session, thread.id, now)
    if thread.assignee_id == actor.user_id:
        return _assignment(session, thread)
    return _reassign(session, thread, actor.user_id, trigger="claim", explanation="Claimed by a staff member.",
                     actor=actor, now=now)


def release(session: Session, *, actor: Actor, thread_id: str) -> schemas.Assignment:
    """Give a thread back to its pool's queue: its assignee, or the pool's lead, may."""
    thread = _staff_thread(session, actor, thread_id)
    pool = session.get(Pool, thread.pool_id) if thread.pool_id else None
    if thread.assignee_id != actor.user_id and (pool is None or pool.lead_id != actor.user_id):
        raise Forbidden("Only the assignee or the pool's lead can release this thread.")
    now = runtime_of(session).clock.now()
    return _reassign(session, thread, None, trigger="release", explanation="Released to the queue.", actor=actor,
                     now=now)


def transfer(session: Session, *, actor: Actor, thread_id: str, to: str) -> schemas.Assignment:
    """Hand a thread to a named colleague of its pool or care team, or to a clinician brought in."""
    thread = _staff_thread(session, actor, thread_id)
    if not _may_take(session, actor.user_id, thread) and thread.assignee_id != actor.user_id:
        raise Forbidden("Only the thread's pool, care team or assignee can transfer it.")
    target = session.scalar(select(User).where(User.username == to, User.active.is_(True)))
    if target is None or target.role == Role.patient or target.role in NO_CONTENT_ROLES:
        raise InvalidInput("Transfer to an active staff member who works with messages.")
    now = runtime_of(session).clock.now()
    if not _may_take(session, target.id, thread):
        if target.role not in CLINICAL_ROLES:
            raise InvalidInput("That colleague is not in this thread's pool or care team.")
        escalation.bring_in(session, thread.id, [target.id], now)
    _acknowledge(session, thread.id, now)
    return _reassign(session, thread, target.id, trigger="transfer", explanation="Transferred by a staff member.",
                     actor=actor, now=now)


def complete_callback(session: Session, *, actor: Actor, thread_id: str) -> schemas.CallbackOut:
    """Mark the emergency call-back done (the nurse reached the patient)."""
    thread = _staff_thread(session, actor, thread_id)
    task = _open_callback(session, thread.id)
    if task is None:
        raise NotFound("No open call-back on this thread.")
    now = runtime_of(session).clock.now()
    for t in session.scalars(select(CallbackTask).where(CallbackTask.thread_id == thread.id,
                                                        CallbackTask.completed_at.is_(None))):
        t.completed_at, t.completed_by = now, actor.user_id
    _acknowledge(session, thread.id, now)
    record(session, action="routing.callback.complete", actor=actor, subject_type="thread", subject_id=thread.id,
           callback_id=task.id)
    publish(session, [actor.user_id] + ([thread.assignee_id] if thread.assignee_id else []),
            {"type": "thread_updated", "thread_id": thread.id})
    return schemas.CallbackOut(id=task.id, thread_id=thread.id, created_at=task.created_at, due_at=task.due_at,
                               completed_at=now)


def decisions(session: Session, *, actor: Actor, thread_id: str) -> list[schemas.DecisionOut]:
    """The thread's routing history with each phase's result, for staff who can read it."""
    thread = _staff_thread(session, actor, thread_id)
    rows = list(session.scalars(select(RoutingDecision).where(RoutingDecision.thread_id == thread.id)
                                .order_by(RoutingDecision.created_at, RoutingDecision.id)))
    ids = {r.assignee_id for r in rows if r.assignee_id}
    names = dict(session.execute(select(User.id, User.username).where(User.id.in_(ids))).all()) if ids else {}
    return [schemas.DecisionOut(id=r.id, trigger=r.trigger, urgency=r.urgency, topic=r.topic, pool=r.pool_id,
                                assignee=names.get(r.assignee_id) if r.assignee_id else None, rule=r.rule,
                                explanation=r.explanation, phases=r.phases or {}, created_at=r.created_at)
            for r in rows]


def clock(session: Session, *, actor: Actor, thread_id: str) -> schemas.ClockOut:
    """The thread's response clock, for staff who can read the thread."""
    thread = _staff_thread(session, actor, thread_id)
    out = clock_states(session, [thread.id]).get(thread.id)
    if out is None:
        raise NotFound("This thread has no response clock.")
    return out


def clock_states(session: Session, thread_ids: list[str]) -> dict[str, schemas.ClockOut]:
    """Thread id -> its response clock, for the API and the queues. A wait a staff message has already answered
    shows as answered now, before its timer settles it (reads never write)."""
    if not thread_ids:
        return {}
    out: dict[str, schemas.ClockOut] = {}
    for st in session.scalars(select(RoutingState).where(RoutingState.thread_id.in_(thread_ids))):
        answered = st.answered_at
        waiting = st.pending_seq is not None
        if st.pending_seq is not None:
            live = escalation.answered_at(session, st.thread_id, st.pending_seq)
            claimed = st.acknowledged_at is not None and st.pending_since is not None \
                and st.acknowledged_at >= st.pending_since
            if live is not None:
                answered, waiting = live, False
            elif claimed or escalation.acknowledged_seq(session, st.thread_id) >= st.pending_seq:
                waiting = False  # read or claimed: the ladder stops at its next look
        out[st.thread_id] = schemas.ClockOut(
            thread_id=st.thread_id, priority=st.priority, rule=st.rule, sla=st.sla, waiting=waiting,
            pending_since=st.pending_since, due_at=st.due_at if waiting else None, step=st.step,
            escalations=st.escalations, acknowledged_at=st.acknowledged_at, answered_at=answered,
            escalated_at=st.escalated_at)
    return out


def duty_status(session: Session, *, actor: Actor) -> schemas.DutyOut:
    policy.require_staff(actor)
    now = runtime_of(session).clock.now()
    rules = rules_for(session, alerts=False)
    r = session.get(Responder, actor.user_id)
    location = session.scalar(select(User.location_id).where(User.id == actor.user_id))
    pools = list(session.scalars(select(Pool.id)))
    on_call = sorted({p for p, u in balance.on_call_now(session, pools, now) if u == actor.user_id})
    return schemas.DutyOut(available=r.available if r is not None else True,
                           clinic_open=rules.is_open(location, now), on_call=on_call)


def set_duty(session: Session, *, actor: Actor, available: bool) -> schemas.DutyOut:
    """A staff member switches themselves on or off duty; going off hands their open threads on now."""
    policy.require_staff(actor)
    now = runtime_of(session).clock.now()
    r = session.get(Responder, actor.user_id)
    if r is None:
        r = Responder(user_id=actor.user_id, available=available, changed_at=now)
        session.add(r)
    else:
        r.available, r.changed_at = available, now
    session.flush()
    record(session, action="routing.duty.set", actor=actor, subject_type="user", subject_id=actor.user_id,
           available=available)
    if not available:
        sweep(session, only_user=actor.user_id)
    return duty_status(session, actor=actor)


def sweep(session: Session, *, only_user: str | None = None, limit: int = 500) -> int:
    """Hand the open threads of responders no longer on duty or on call to someone who is (or back to the
    queue when nobody is); returns how many moved."""
    now = runtime_of(session).clock.now()
    rules = rules_for(session)
    q = select(Thread).where(Thread.status == "open", Thread.assignee_id.is_not(None))
    if only_user is not None:
        q = q.where(Thread.assignee_id == only_user)
    threads = list(session.scalars(q.order_by(Thread.created_at, Thread.id).limit(limit)))
    verdict: dict[tuple[str, str | None], bool] = {}
    moved = 0
    for thread in threads:
        assert thread.assignee_id is not None
        key = (thread.assignee_id, thread.pool_id)
        if key not in verdict:
            verdict[key] = balance.is_eligible(session, rules=rules, now=now, user_id=thread.assignee_id,
                                               pool_id=thread.pool_id)
        if verdict[key]:
            continue
        pool = session.get(Pool, thread.pool_id) if thread.pool_id else None
        ctx = provider_for(runtime_of(session).settings).patient_context(session, patient_id=thread.patient_id) \
            if thread.patient_id else PatientContext()
        people = balance.candidates(session, rules=rules, now=now, pool=pool, care_team_id=thread.care_team_id,
                                    location_id=ctx.location_id)
        pick = balance.choose(people, exclude=[thread.assignee_id])
        _reassign(session, thread, pick.assignee_id, trigger="reassign",
                  explanation="Reassigned: the assignee is off duty." if pick.assignee_id
                  else "Returned to the queue: the assignee is off duty and nobody else is.",
                  actor=None, now=now, why=pick.reason)
        moved += 1
    return moved


def pool_workload(session: Session, *, actor: Actor, pool_id: str) -> list[schemas.WorkloadOut]:
    """Open assigned work per member of a pool, for its members and lead."""
    policy.pool_for_member(session, actor, pool_id)
    members = list(session.execute(select(User.id, User.username).join(PoolMember, PoolMember.user_id == User.id)
                                   .where(PoolMember.pool_id == pool_id).order_by(User.username)))
    ids = [m[0] for m in members]
    weighted = balance.open_load(session, ids)
    counts = dict(session.execute(select(Thread.assignee_id, func.count()).where(
        Thread.status == "open", Thread.assignee_id.in_(ids)).group_by(Thread.assignee_id)).all()) if ids else {}
    avail = {r.user_id: r.available for r in session.scalars(select(Responder).where(Responder.user_id.in_(ids)))}
    return [schemas.WorkloadOut(user_id=uid, username=name, open_threads=int(counts.get(uid, 0)),
                                weighted_load=weighted.get(uid, 0), available=avail.get(uid, True))
            for uid, name in members]


def run_duty_sweep(session: Session, payload: dict[str, Any]) -> None:
    sweep(session)
    now = runtime_of(session).clock.now()
    if session.scalar(select(Thread.id).where(Thread.status == "open", Thread.assignee_id.is_not(None)).limit(1)):
        _arm_duty_sweep(session, now + timedelta(seconds=1))


def run_escalation(session: Session, payload: dict[str, Any]) -> None:
    escalation.fire(session, payload, rules=rules_for(session))


from lockbox.routing import tasks as _tasks  # noqa: E402  (registers the job handlers on import)

__all__ = ["UNREAD", "UNSCREENED", "Decision", "_tasks", "record_decision", "route_first_reply",
           "route_patient_message", "route_patient_reply", "screen_addressed"]
