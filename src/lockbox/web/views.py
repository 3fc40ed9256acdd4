"""What each page needs, in one unit of work: threads through ``messaging.service`` (and its access rules),
plus small directory look-ups (the caller's pools, display names, a patient's card for staff)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.consent import service as consent
from lockbox.directory.models import Pool, PoolMember
from lockbox.errors import NotFound
from lockbox.identity.models import Patient, User
from lockbox.identity.roles import NO_CONTENT_ROLES, Role
from lockbox.messaging import schemas
from lockbox.messaging import service as messaging
from lockbox.messaging.models import Participant


@dataclass(frozen=True)
class PoolRef:
    id: str
    name: str


@dataclass
class Queue:
    pool: PoolRef
    threads: list[schemas.ThreadSummary]


@dataclass
class Inbox:
    queues: list[Queue]
    mine: list[schemas.ThreadSummary]
    others: list[schemas.ThreadSummary]


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
    return Inbox(queues, mine, others)


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
    return ThreadPage(detail, card, names)


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
