"""What each page needs, in one unit of work: threads through ``messaging.service`` (and its access rules),
plus small directory look-ups (the caller's pools, display names, a patient's card for staff)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.audit.models import AuditRow
from lockbox.consent import service as consent
from lockbox.db.uow import runtime_of
from lockbox.directory.models import Pool, PoolMember
from lockbox.errors import NotFound
from lockbox.fhir import service as fhir
from lockbox.fhir.schemas import FilingOut
from lockbox.gateway import service as gateway
from lockbox.gateway.schemas import DeliveryOut
from lockbox.identity.models import Patient, User
from lockbox.identity.roles import CLINICAL_ROLES, NO_CONTENT_ROLES, Role
from lockbox.messaging import schemas
from lockbox.messaging import service as messaging
from lockbox.messaging.models import Message, Participant
from lockbox.routing import service as routing
from lockbox.routing.models import CallbackTask, RoutingDecision, RoutingState
from lockbox.routing.rules import Sla


@dataclass(frozen=True)
class PoolRef:
    id: str
    name: str


@dataclass
class Queue:
    pool: PoolRef
    threads: list[schemas.ThreadSummary]


@dataclass(frozen=True)
class Clock:
    """A routed thread's response clock as the pages show it: when the waiting patient message is due,
    and how far the escalation ladder has climbed."""

    priority: str
    sla: str
    waiting: bool  # a patient message no staff member has read, answered or claimed yet
    due_at: datetime | None  # when the waiting message's response is (was) due
    escalations: int
    tier: str | None  # the last tier notified
    escalated_at: datetime | None

    def overdue(self, now: datetime) -> bool:
        return self.waiting and self.due_at is not None and now >= self.due_at

    def seconds_left(self, now: datetime) -> float:
        return (self.due_at - now).total_seconds() if self.due_at is not None else 0.0


@dataclass(frozen=True)
class Callback:
    id: str
    created_at: datetime
    due_at: datetime


@dataclass
class Inbox:
    queues: list[Queue]
    mine: list[schemas.ThreadSummary]
    others: list[schemas.ThreadSummary]
    clocks: dict[str, Clock] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # assignee id -> display name


@dataclass(frozen=True)
class PatientCard:
    display_name: str
    birth_date: date
    mrn: str


@dataclass
class ThreadPage:
    detail: schemas.ThreadDetail
    patient: PatientCard | None
    names: dict[str, str] = field(default_factory=dict)
    clock: Clock | None = None
    callback: Callback | None = None
    assignee: str | None = None  # the assignee's display name
    colleagues: list[tuple[str, str]] = field(default_factory=list)  # transfer targets: (username, name)
    leads_pool: bool = False  # the caller leads the thread's pool (and may release it from anyone)
    # The rule and explanation of the latest decision a message caused; a claim or transfer since
    # does not replace why the thread went where it did.
    routed: tuple[str, str] | None = None
    # The thread's filing into the EHR chart, for a clinician when filing is configured (docs/fhir.md).
    filing: FilingOut | None = None
    # How the external recipients of a thread the [secure] gateway started were reached (docs/gateway.md).
    external: list[DeliveryOut] = field(default_factory=list)


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class Hints:
    colleagues: list[tuple[str, str]]
    pools: list[PoolRef]


def my_pools(session: Session, *, actor: Actor) -> list[PoolRef]:
    """The pools whose queues the caller works: as a member or as the lead (who may see the queue too)."""
    member_of = select(PoolMember.pool_id).where(PoolMember.user_id == actor.user_id)
    rows = session.execute(select(Pool.id, Pool.name).where(or_(Pool.id.in_(member_of), Pool.lead_id == actor.user_id))
                           .order_by(Pool.name, Pool.id))
    return [PoolRef(r.id, r.name) for r in rows]


def inbox(session: Session, *, actor: Actor) -> Inbox:
    """The clinician's inbox: each pool's queue (urgency, then age), their own threads, then the rest they see."""
    if actor.is_patient or actor.role in NO_CONTENT_ROLES:
        raise NotFound()
    queues = [Queue(p, messaging.pool_queue(session, actor=actor, pool_id=p.id))
              for p in my_pools(session, actor=actor)]
    visible = messaging.list_threads(session, actor=actor)
    ids = [t.id for t in visible]
    member_of = set(session.scalars(select(Participant.thread_id).where(
        Participant.user_id == actor.user_id, Participant.kind == "member", Participant.thread_id.in_(ids)))) \
        if ids else set()
    queued = {t.id for q in queues for t in q.threads}
    mine = [t for t in visible if t.id in member_of or t.assignee == actor.user_id]
    shown = queued | {t.id for t in mine}
    others = [t for t in visible if t.id not in shown]
    listed = [t for q in queues for t in q.threads] + mine + others
    now = runtime_of(session).clock.now()
    return Inbox(queues, mine, others, clocks(session, list({t.id for t in listed}), now),
                 display_names(session, {t.assignee for t in listed if t.assignee}))


def display_names(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return {k: v for k, v in session.execute(select(User.id, User.display_name).where(User.id.in_(ids)))}


def clocks(session: Session, thread_ids: list[str], now: datetime) -> dict[str, Clock]:
    """The response clocks of these threads, in a few queries whatever their number.

    The stored clock stops only when its timer fires; a read, a reply or a claim since then already
    stopped it in routing's eyes (``escalation.fire``), so the page applies the same test now."""
    if not thread_ids:
        return {}
    states = list(session.scalars(select(RoutingState).where(RoutingState.thread_id.in_(thread_ids))))
    if not states:
        return {}
    ids = [s.thread_id for s in states]
    staff = User.role != Role.patient
    read = dict(session.execute(select(Participant.thread_id, func.max(Participant.last_read_seq))
                                .join(User, User.id == Participant.user_id)
                                .where(Participant.thread_id.in_(ids), staff).group_by(Participant.thread_id)).all())
    wrote = dict(session.execute(select(Message.thread_id, func.max(Message.seq))
                                 .join(User, User.id == Message.sender_id)
                                 .where(Message.thread_id.in_(ids), staff).group_by(Message.thread_id)).all())
    last: dict[str, AuditRow] = {}
    escalated = [s.thread_id for s in states if s.escalations]
    if escalated:
        for row in session.scalars(select(AuditRow).where(AuditRow.action == "routing.thread.escalate",
                                                          AuditRow.subject_id.in_(escalated))
                                   .order_by(AuditRow.seq)):
            last[str(row.subject_id)] = row
    rules = None
    out: dict[str, Clock] = {}
    for st in states:
        ack = max(int(read.get(st.thread_id) or 0), int(wrote.get(st.thread_id) or 0))
        claimed = st.acknowledged_at is not None and st.pending_since is not None \
            and st.acknowledged_at >= st.pending_since
        waiting = st.pending_seq is not None and ack < st.pending_seq and not claimed
        due = st.due_at
        if waiting and st.step and st.pending_since is not None:
            # Each escalation moves the stored due time on to the next tier's; the response was due
            # at the first one.
            rules = rules or routing.rules_for(session, alerts=False)
            due = rules.due(st.pending_since, Sla.parse(st.sla))
        esc = last.get(st.thread_id)
        out[st.thread_id] = Clock(st.priority, st.sla, waiting, due if waiting else None, st.escalations,
                                  str(esc.details.get("tier")) if esc is not None else None,
                                  esc.at if esc is not None else None)
    return out


def open_callback(session: Session, thread_id: str) -> Callback | None:
    task = session.scalar(select(CallbackTask).where(CallbackTask.thread_id == thread_id,
                                                     CallbackTask.completed_at.is_(None))
                          .order_by(CallbackTask.created_at).limit(1))
    return Callback(task.id, task.created_at, task.due_at) if task is not None else None


def colleagues(session: Session, *, actor: Actor, pool_id: str | None) -> list[tuple[str, str]]:
    """Whom a thread is usually handed to: its pool's other members (anyone clinical may be typed in)."""
    if pool_id is None:
        return []
    rows = session.execute(select(User.username, User.display_name).join(PoolMember, PoolMember.user_id == User.id)
                           .where(PoolMember.pool_id == pool_id, User.active.is_(True), User.id != actor.user_id)
                           .order_by(User.display_name).limit(200))
    return [(r.username, r.display_name) for r in rows]


@dataclass
class Portal:
    threads: list[schemas.ThreadSummary]
    consent: str  # the messaging consent in force: granted | declined | withdrawn | none


def portal(session: Session, *, actor: Actor) -> Portal:
    if not actor.is_patient:
        raise NotFound()
    rec = consent.current(session, patient_id=actor.user_id)
    return Portal(messaging.list_threads(session, actor=actor), rec.status if rec else "none")


def open_thread(session: Session, *, actor: Actor, thread_id: str, mark_read: bool = True) -> ThreadPage:
    """The thread as its page shows it. Opening it is reading it: a receipt goes out when something was unread."""
    detail = messaging.get_thread(session, actor=actor, thread_id=thread_id)
    if mark_read and detail.unread:
        # Only when something is unread: the receipt is pushed to the other side, whose page then
        # refreshes; a receipt on every refresh would bounce between two open pages for ever.
        messaging.mark_read(session, actor=actor, thread_id=thread_id)
    readers = {uid for m in detail.messages for uid in m.read_by}
    names = {k: v for k, v in session.execute(select(User.id, User.display_name).where(User.id.in_(readers)))} \
        if readers else {}
    card = None
    if detail.patient is not None and not actor.is_patient:
        p = session.get(Patient, detail.patient.id)
        if p is not None:
            card = PatientCard(detail.patient.display_name, p.birth_date, p.mrn)
    page = ThreadPage(detail, card, names)
    if not actor.is_patient:
        page.clock = clocks(session, [thread_id], runtime_of(session).clock.now()).get(thread_id)
        page.callback = open_callback(session, thread_id)
        page.assignee = display_names(session, {detail.assignee}).get(detail.assignee or "") \
            if detail.assignee else None
        page.colleagues = colleagues(session, actor=actor, pool_id=detail.pool)
        page.leads_pool = detail.pool is not None and session.scalar(
            select(Pool.lead_id).where(Pool.id == detail.pool)) == actor.user_id
        why = session.execute(select(RoutingDecision.rule, RoutingDecision.explanation)
                              .where(RoutingDecision.thread_id == thread_id,
                                     RoutingDecision.trigger.in_(("message", "reply")))
                              .order_by(RoutingDecision.created_at.desc(), RoutingDecision.id.desc()).limit(1)).first()
        page.routed = (why.rule, why.explanation) if why is not None else None
        page.filing = filing_for(session, actor=actor, detail=detail)
        if detail.kind == gateway.EXTERNAL_KIND:
            page.external = gateway.external_deliveries(session, actor=actor, thread_id=thread_id)
    return page


def filing_for(session: Session, *, actor: Actor, detail: schemas.ThreadDetail) -> FilingOut | None:
    """What the chart card shows: only clinicians file, only a patient's thread, only with filing configured."""
    settings = runtime_of(session).settings
    if actor.role not in CLINICAL_ROLES or detail.patient is None or not settings.fhir_base_url \
            or settings.fhir_filing == "off":
        return None
    return fhir.filing_status(session, actor=actor, thread_id=detail.id)


def start_thread(session: Session, *, actor: Actor, data: schemas.ThreadCreate,
                 upload: Upload | None = None) -> schemas.ThreadCreated:
    """A new thread, with its first attachment in the same unit: both are sent, or neither."""
    created = messaging.create_thread(session, actor=actor, data=data)
    if upload is not None:
        messaging.add_attachment(session, actor=actor, thread_id=created.id, filename=upload.filename,
                                 data=upload.data)
    return created


def post_reply(session: Session, *, actor: Actor, thread_id: str, body: str, upload: Upload | None = None) -> None:
    if upload is not None:
        messaging.add_attachment(session, actor=actor, thread_id=thread_id, filename=upload.filename,
                                 data=upload.data, body=body)
    else:
        messaging.reply(session, actor=actor, thread_id=thread_id, body=body)


def compose_hints(session: Session, *, actor: Actor) -> Hints:
    """Colleagues and pools to pick from when starting a thread. Patients are never listed: they are
    named on purpose, then confirmed by name, birth date and MRN."""
    if actor.is_patient or actor.role in NO_CONTENT_ROLES:
        raise NotFound()
    hidden = [Role.patient.value, *(r.value for r in NO_CONTENT_ROLES)]
    people = session.execute(select(User.username, User.display_name)
                             .where(User.active.is_(True), User.role.not_in(hidden), User.id != actor.user_id)
                             .order_by(User.display_name).limit(500))
    pools = session.execute(select(Pool.id, Pool.name).order_by(Pool.name))
    return Hints([(r.username, r.display_name) for r in people], [PoolRef(r.id, r.name) for r in pools])


def nothing(session: Session, *, actor: Actor) -> None:
    """For pages that need only the signed-in user."""
