"""Threads and messages: start, list, open, reply, receipts, urgency, attachments, pool queues.

Every path reaches a thread through ``access.policy``; every subject, body and file is sealed with
the thread's data key before it reaches the session; every change is audited in its own unit.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import puremagic
from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    String,
    Table,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    select,
    union,
    update,
)
from sqlalchemy.orm import Session

from lockbox.access import policy
from lockbox.access.actor import Actor
from lockbox.audit.service import record
from lockbox.consent.service import require_messaging_consent
from lockbox.crypto import aead
from lockbox.crypto.exceptions import KeyExhausted
from lockbox.crypto.service import count_seal
from lockbox.db.base import UTCDateTime, new_id
from lockbox.db.prepared import Prepared
from lockbox.db.uow import Credentials, publish, resolves_credentials, runtime_of
from lockbox.directory.models import CareTeamMember, Pool, PoolMember
from lockbox.errors import (
    ConfirmRecipients,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from lockbox.identity.models import Patient, User
from lockbox.identity.roles import Role
from lockbox.messaging import schemas
from lockbox.messaging.exceptions import UnknownRecipient
from lockbox.messaging.models import Attachment, Correspondent, Message, Participant, Thread
from lockbox.messaging.sealing import ThreadCipher
from lockbox.notify import service as notify
from lockbox.routing import service as routing
from lockbox.routing.models import RoutingDecision, RoutingState

# What may be attached, decided from the bytes themselves, never from the name or declared type.
ALLOWED_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"}
INLINE_SAFE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


@dataclass
class _Recipients:
    users: list[User]
    patient: User | None
    pool: Pool | None


# -- starting a thread ---------------------------------------------------------------------------


def create_thread(session: Session, *, actor: Actor, data: schemas.ThreadCreate) -> schemas.ThreadCreated:
    """Start a thread. A patient's message without ``to`` is routed; staff address users or a pool.

    A first message to anyone the sender never wrote to needs ``confirm_recipients`` (misdelivery
    guard); staff may not start a thread with a patient who has not consented.
    """
    policy.require_sender(actor)
    rt = runtime_of(session)
    now = rt.clock.now()
    recipients = _resolve_recipients(session, actor, data)
    if actor.is_patient:
        patient_row = session.get(Patient, actor.user_id)
        care_team_id = patient_row.care_team_id if patient_row else None
        patient_id: str | None = actor.user_id
    else:
        patient_id = recipients.patient.id if recipients.patient else None
        care_team_id = None
        if recipients.patient is not None:
            require_messaging_consent(session, patient_id=recipients.patient.id)
            p = session.get(Patient, recipients.patient.id)
            care_team_id = p.care_team_id if p else None
    _misdelivery_guard(session, actor, recipients, confirmed=data.confirm_recipients)

    if actor.is_patient and not recipients.users and recipients.pool is None:
        decision = routing.route_patient_message(
            session, patient_id=actor.user_id, care_team_id=care_team_id, subject=data.subject, body=data.body,
            urgent=data.urgent,
        )
    else:
        decision = routing.Decision(
            urgency="urgent" if data.urgent else "routine",
            topic="other",
            pool_id=recipients.pool.id if recipients.pool else None,
            assignee_id=None,
            rule="addressed",
            explanation="Addressed by the sender.",
        )
        if actor.is_patient:  # addressed, yet still checked for an emergency
            decision = routing.screen_addressed(session, decision, patient_id=actor.user_id,
                                                care_team_id=care_team_id, subject=data.subject, body=data.body,
                                                addressed_to=[u.id for u in recipients.users], urgent=data.urgent)

    thread_id = new_id()
    cipher, key_version, wrapped = ThreadCipher.new(rt.keyring, thread_id)
    count_seal(session, key_version=key_version)
    member_ids = [actor.user_id] + [u.id for u in recipients.users]
    if recipients.patient is not None:
        member_ids.append(recipients.patient.id)
    member_ids = list(dict.fromkeys(member_ids))
    kind = "patient" if patient_id else ("group" if len(member_ids) > 2 else "staff")
    message_id = new_id()
    messages: list[tuple[str, str | None, str, str]] = [(message_id, actor.user_id, "message", data.body)]
    if decision.auto_reply:
        messages.append((new_id(), None, "auto_reply", decision.auto_reply))
    thread = Thread(
        id=thread_id,
        kind=kind,
        patient_id=patient_id,
        care_team_id=care_team_id,
        pool_id=decision.pool_id,
        assignee_id=decision.assignee_id,
        created_by=actor.user_id,
        created_at=now,
        last_message_at=now,
        status="open",
        urgent=data.urgent or decision.urgency in ("urgent", "emergency"),
        emergency=decision.emergency,
        subject_sealed=cipher.seal_subject(data.subject),
        message_count=len(messages),
        data_key_wrapped=wrapped,
        key_version=key_version,
        data_key_uses=1 + len(messages),
    )
    session.add(thread)
    session.flush()
    session.execute(
        insert(Message),
        [
            {"id": mid, "thread_id": thread_id, "seq": seq, "sender_id": sender, "created_at": now, "kind": kind_,
             "body_sealed": cipher.seal_body(mid, body)}
            for seq, (mid, sender, kind_, body) in enumerate(messages, start=1)
        ],
    )
    session.execute(
        insert(Participant),
        [
            {"thread_id": thread_id, "user_id": uid, "kind": "member", "joined_at": now,
             "last_read_seq": 1 if uid == actor.user_id else 0,
             "last_delivered_seq": 1 if uid == actor.user_id else 0}
            for uid in member_ids
        ],
    )
    if patient_id or decision.rule != "addressed":
        routing.record_decision(session, thread_id=thread_id, message_id=message_id, decision=decision)
    record(session, action="messaging.thread.create", actor=actor, subject_type="thread", subject_id=thread_id,
           message_id=message_id, kind=kind, pool=decision.pool_id, rule=decision.rule)
    record(session, action="messaging.message.send", actor=actor, subject_type="message", subject_id=message_id,
           thread_id=thread_id)
    _notify(session, thread, {"type": "thread", "thread_id": thread_id, "message_id": message_id, "seq": 1},
            sender_id=actor.user_id)
    return schemas.ThreadCreated(
        id=thread_id,
        message_id=message_id,
        routing=_routing_out(session, decision.urgency, decision.topic, decision.pool_id, decision.assignee_id,
                             decision.rule, decision.explanation),
        auto_reply=decision.auto_reply,
    )


def _resolve_recipients(session: Session, actor: Actor, data: schemas.ThreadCreate) -> _Recipients:
    names = list(data.to)
    if data.patient:
        if actor.is_patient:
            raise InvalidInput("Patients do not name a patient; write to your care team.")
        names.append(data.patient)
    users: list[User] = []
    patient: User | None = None
    pools: list[Pool] = []
    unknown: list[str] = []
    for name in dict.fromkeys(names):
        pool = session.get(Pool, name)
        if pool is not None and name != data.patient:
            pools.append(pool)
            continue
        user = session.scalar(select(User).where(User.username == name, User.active.is_(True)))
        if user is None or user.id == actor.user_id or (name == data.patient and user.role != Role.patient):
            unknown.append(name)
        elif user.role == Role.patient:
            if actor.is_patient:
                unknown.append(name)
            elif patient is not None and patient.id != user.id:
                raise InvalidInput("A thread can include one patient only.")
            else:
                patient = user
        elif user.role in (Role.compliance, Role.admin):
            unknown.append(name)
        else:
            users.append(user)
    if actor.is_patient:
        unknown += _not_on_my_team(session, actor, users)
    if unknown:
        raise UnknownRecipient(recipients=unknown)
    if len(pools) > 1:
        raise InvalidInput("Address one pool per thread.")
    if not actor.is_patient and not users and not pools and patient is None:
        raise InvalidInput("Name at least one recipient: a colleague, a pool or a patient.")
    return _Recipients(users=users, patient=patient, pool=pools[0] if pools else None)


def _not_on_my_team(session: Session, actor: Actor, users: list[User]) -> list[str]:
    """Patients may address only their PCP and their care team's staff."""
    if not users:
        return []
    patient = session.get(Patient, actor.user_id)
    allowed: set[str] = set()
    if patient is not None:
        if patient.pcp_id:
            allowed.add(patient.pcp_id)
        if patient.care_team_id:
            allowed |= set(session.scalars(
                select(CareTeamMember.user_id).where(CareTeamMember.care_team_id == patient.care_team_id)))
    return [u.username for u in users if u.id not in allowed]


def _misdelivery_guard(session: Session, actor: Actor, r: _Recipients, *, confirmed: bool) -> None:
    keys = {f"user:{u.id}": u for u in r.users}
    if r.patient is not None:
        keys[f"user:{r.patient.id}"] = r.patient
    pool_key = f"pool:{r.pool.id}" if r.pool else None
    wanted = set(keys) | ({pool_key} if pool_key else set())
    if not wanted:
        return
    known = set(session.scalars(
        select(Correspondent.recipient).where(Correspondent.sender_id == actor.user_id,
                                              Correspondent.recipient.in_(wanted))))
    new = wanted - known
    if not new:
        return
    if not confirmed:
        cards = []
        for key in sorted(new):
            if key == pool_key and r.pool is not None:
                cards.append(schemas.RecipientCard(kind="pool", id=r.pool.id, name=r.pool.id,
                                                   display_name=r.pool.name))
                continue
            user = keys[key]
            card = schemas.RecipientCard(kind="user", id=user.id, name=user.username,
                                         display_name=user.display_name, role=user.role)
            if user.role == Role.patient:
                # Name, birth date and MRN let the sender tell two patients of the same name apart.
                p = session.get(Patient, user.id)
                if p is not None:
                    card.birth_date, card.mrn = p.birth_date.isoformat(), p.mrn
            cards.append(card)
        raise ConfirmRecipients(recipients=[c.model_dump() for c in cards])
    now = runtime_of(session).clock.now()
    session.execute(insert(Correspondent),
                    [{"sender_id": actor.user_id, "recipient": key, "first_at": now} for key in sorted(new)])


# -- reading -------------------------------------------------------------------------------------


def list_threads(session: Session, *, actor: Actor, limit: int = 100) -> list[schemas.ThreadSummary]:
    """Threads the caller may read, newest activity first, with the caller's unread count."""
    now = runtime_of(session).clock.now()
    threads = list(session.scalars(
        select(Thread).where(policy.visible_threads(actor, now))
        .order_by(Thread.last_message_at.desc(), Thread.id).limit(limit)))
    return _summaries(session, actor, threads)


def pool_queue(session: Session, *, actor: Actor, pool_id: str) -> list[schemas.ThreadSummary]:
    """A pool's open threads for its members: emergencies, then urgent, then oldest first."""
    policy.pool_for_member(session, actor, pool_id)
    threads = list(session.scalars(
        select(Thread).where(Thread.pool_id == pool_id, Thread.status == "open")
        .order_by(Thread.emergency.desc(), Thread.urgent.desc(), Thread.created_at, Thread.id).limit(500)))
    out = _summaries(session, actor, threads)
    out.sort(key=lambda s: s.callback_due is None)  # stable: open call-backs first, then the order above
    return out


def _summaries(session: Session, actor: Actor, threads: list[Thread]) -> list[schemas.ThreadSummary]:
    if not threads:
        return []
    ids = [t.id for t in threads]
    read: dict[str, int] = dict(session.execute(
        select(Participant.thread_id, Participant.last_read_seq)
        .where(Participant.thread_id.in_(ids), Participant.user_id == actor.user_id)).all())
    people = _people(session, {t.patient_id for t in threads if t.patient_id})
    decisions = _latest_decisions(session, ids)
    callbacks = routing.open_callbacks(session, ids)
    keyring = runtime_of(session).keyring
    out = []
    for t in threads:
        cipher = ThreadCipher.open(keyring, t.id, t.key_version, t.data_key_wrapped)
        d = decisions.get(t.id)
        out.append(schemas.ThreadSummary(
            id=t.id, kind=t.kind, subject=cipher.open_subject(t.subject_sealed),
            patient=people.get(t.patient_id) if t.patient_id else None,
            pool=t.pool_id, assignee=t.assignee_id, status=t.status, urgent=t.urgent, emergency=t.emergency,
            created_at=t.created_at, last_message_at=t.last_message_at, message_count=t.message_count,
            unread=max(0, t.message_count - read.get(t.id, 0)),
            urgency=d.urgency if d else None, topic=d.topic if d else None, callback_due=callbacks.get(t.id),
        ))
    return out


def _people(session: Session, ids: Iterable[str]) -> dict[str, schemas.Person]:
    ids = set(ids)
    if not ids:
        return {}
    rows = session.execute(select(User.id, User.username, User.display_name, User.role).where(User.id.in_(ids)))
    return {r.id: schemas.Person(id=r.id, username=r.username, display_name=r.display_name, role=r.role)
            for r in rows}


def _latest_decisions(session: Session, thread_ids: list[str]) -> dict[str, RoutingDecision]:
    rows = session.scalars(
        select(RoutingDecision).where(RoutingDecision.thread_id.in_(thread_ids))
        .order_by(RoutingDecision.created_at, RoutingDecision.id))
    return {d.thread_id: d for d in rows}


def _routing_out(session: Session, urgency: str, topic: str, pool_id: str | None, assignee_id: str | None,
                 rule: str, explanation: str) -> schemas.Routing:
    assignee = session.get(User, assignee_id) if assignee_id else None
    return schemas.Routing(urgency=urgency, topic=topic, pool=pool_id,
                           assignee=assignee.username if assignee else None, rule=rule, explanation=explanation)


def get_thread(session: Session, *, actor: Actor, thread_id: str) -> schemas.ThreadDetail:
    """The thread with its messages opened for the caller; records delivery and an audited view."""
    thread = policy.thread_for_read(session, actor, thread_id)
    now = runtime_of(session).clock.now()
    cipher = ThreadCipher.open(runtime_of(session).keyring, thread.id, thread.key_version, thread.data_key_wrapped)
    participants = list(session.scalars(select(Participant).where(Participant.thread_id == thread.id)))
    mine = next((p for p in participants if p.user_id == actor.user_id), None)
    if mine is None:
        mine = Participant(thread_id=thread.id, user_id=actor.user_id, kind="observer", joined_at=now,
                           last_read_seq=0, last_delivered_seq=0)
        session.add(mine)
        participants.append(mine)
    mine.last_delivered_seq = thread.message_count
    messages = list(session.scalars(select(Message).where(Message.thread_id == thread.id).order_by(Message.seq)))
    attachments: dict[str, list[schemas.AttachmentOut]] = {}
    for a in session.scalars(select(Attachment).where(Attachment.thread_id == thread.id)):
        attachments.setdefault(a.message_id, []).append(schemas.AttachmentOut(
            id=a.id, filename=cipher.open_file_name(a.id, a.name_sealed), content_type=a.content_type, size=a.size))
    people = _people(session, {p.user_id for p in participants} | {m.sender_id for m in messages if m.sender_id}
                     | ({thread.patient_id} if thread.patient_id else set()))
    system = schemas.Person(id="clinic", username="clinic", display_name=runtime_of(session).settings.clinic_name,
                            role="system")
    # In an email gateway thread (kind "external") a message without a sender account is the external
    # recipient's answer: never shown as the clinic's.
    external = schemas.Person(id="external", username="external", display_name="External recipient",
                              role="external") if thread.kind == "external" else None
    out_messages = [
        schemas.MessageOut(
            id=m.id, seq=m.seq, created_at=m.created_at,
            sender=people[m.sender_id] if m.sender_id else external or system,
            sender_label=external.display_name if external is not None and not m.sender_id else None,
            kind=m.kind, body=cipher.open_body(m.id, m.body_sealed), attachments=attachments.get(m.id, []),
            read_by=[p.user_id for p in participants if p.user_id != m.sender_id and p.last_read_seq >= m.seq],
            delivered_to=[p.user_id for p in participants
                          if p.user_id != m.sender_id and p.last_delivered_seq >= m.seq],
        )
        for m in messages
    ]
    decision = _latest_decisions(session, [thread.id]).get(thread.id)
    record(session, action="messaging.thread.view", actor=actor, subject_type="thread", subject_id=thread.id)
    return schemas.ThreadDetail(
        id=thread.id, kind=thread.kind, subject=cipher.open_subject(thread.subject_sealed),
        patient=people.get(thread.patient_id) if thread.patient_id else None, pool=thread.pool_id,
        assignee=thread.assignee_id, status=thread.status, urgent=thread.urgent, emergency=thread.emergency,
        created_at=thread.created_at, last_message_at=thread.last_message_at, message_count=thread.message_count,
        unread=max(0, thread.message_count - mine.last_read_seq),
        urgency=decision.urgency if decision else None, topic=decision.topic if decision else None,
        participants=[people[p.user_id] for p in participants if p.kind == "member" and p.user_id in people],
        messages=out_messages,
        routing=_routing_out(session, decision.urgency, decision.topic, decision.pool_id, decision.assignee_id,
                             decision.rule, decision.explanation) if decision else None,
    )


# -- replying and receipts -----------------------------------------------------------------------


@resolves_credentials
def reply(session: Session, *, actor: Actor | Credentials, thread_id: str, body: str,
          screened: Any = routing.UNSCREENED) -> schemas.MessageOut:
    """Add a message; the sender becomes a member of the thread. The hot path: prepared statements only,
    and the access check also brings who follows the thread and how its patient can be reached (on
    PostgreSQL each statement is a round trip); given Credentials, it also resolves the caller's session.
    ``screened``: the emergency check of ``body``, when the request already had it run
    (``routing.screening``); used only if the sender turns out a patient."""
    if isinstance(actor, Credentials):
        actor, thread = policy.caller_and_thread_facts_for_write(session, actor, thread_id, extra=_REPLY_EXTRA)
    else:
        thread = policy.thread_facts_for_write(session, actor, thread_id, extra=_REPLY_EXTRA)
    followers = {uid for uid in f"{thread.members or ''},{thread.pool_members or ''}".split(",") if uid}
    patient = notify.Recipient(thread.patient_id, thread.patient_role, thread.patient_email, thread.patient_phone,
                               bool(thread.patient_active)) if thread.patient_role is not None else None
    return _append(session, actor, thread, body, known=(followers, patient), screened=screened)


_threads = cast(Table, Thread.__table__)
_messages = cast(Table, Message.__table__)
_participants = cast(Table, Participant.__table__)
_pool_members = cast(Table, PoolMember.__table__)
_routing_states = cast(Table, RoutingState.__table__)
# The send path's statements, built once (bind names must differ from column names in SET clauses).
_BUMP = Prepared(
    update(_threads)
    .where(_threads.c.id == bindparam("b_thread"))
    .values(message_count=_threads.c.message_count + 1, data_key_uses=_threads.c.data_key_uses + bindparam("b_uses"),
            last_message_at=bindparam("b_now"), status="open")
    .returning(_threads.c.message_count, _threads.c.data_key_uses)
)
_INSERT_MESSAGE = Prepared(insert(_messages).values(
    {c: bindparam(c) for c in ("id", "thread_id", "seq", "sender_id", "created_at", "kind", "body_sealed")}))
_MARK_OWN = Prepared(
    update(_participants)
    .where(_participants.c.thread_id == bindparam("b_thread"), _participants.c.user_id == bindparam("b_user"))
    .values(kind="member", last_read_seq=bindparam("b_seq"), last_delivered_seq=bindparam("b_seq"),
            last_read_at=bindparam("b_now"))
)
_JOIN = Prepared(insert(_participants).values(
    thread_id=bindparam("b_thread"), user_id=bindparam("b_user"), kind="member", joined_at=bindparam("b_now"),
    last_read_seq=bindparam("b_seq"), last_delivered_seq=bindparam("b_seq"), last_read_at=bindparam("b_now")))



def _send_pg(*, patient: bool) -> Prepared:
    """PostgreSQL: _BUMP, _INSERT_MESSAGE and _MARK_OWN as one statement (data-modifying CTEs), so a
    message costs one round trip instead of three. Returns seq, uses and own (receipts updated); a
    patient's also the thread's response clock, locked (``routing.service.CLOCK_OF_THREAD``)."""
    bump = (update(_threads).where(_threads.c.id == bindparam("b_thread"))
            .values(message_count=_threads.c.message_count + 1,
                    data_key_uses=_threads.c.data_key_uses + bindparam("b_uses"),
                    last_message_at=bindparam("b_now"), status="open")
            .returning(_threads.c.message_count.label("seq"), _threads.c.data_key_uses.label("uses"))).cte("bump")
    message = insert(_messages).from_select(
        ["id", "thread_id", "seq", "sender_id", "created_at", "kind", "body_sealed"],
        select(bindparam("b_id", type_=String()), bindparam("b_thread", type_=String()), bump.c.seq,
               bindparam("b_sender", type_=String()), bindparam("b_now", type_=UTCDateTime()),
               literal("message", String()), bindparam("b_body", type_=LargeBinary())),
    ).cte("message")
    own = (update(_participants)
           .where(_participants.c.thread_id == bindparam("b_thread"), _participants.c.user_id == bindparam("b_user"))
           .values(kind="member", last_read_seq=bump.c.seq, last_delivered_seq=bump.c.seq,
                   last_read_at=bindparam("b_now"))
           .returning(_participants.c.user_id)).cte("own")
    seq_uses_own = (bump.c.seq, bump.c.uses, select(func.count()).select_from(own).scalar_subquery().label("own"))
    if not patient:
        return Prepared(select(*seq_uses_own).add_cte(message))
    # The thread's response clock too, which a patient's reply reads next.
    clock = routing.CLOCK_OF_THREAD.cte("clock")
    return Prepared(select(*seq_uses_own, select(clock).exists().label("clocked"),
                           select(clock.c.pending_seq).scalar_subquery().label("pending_seq")).add_cte(message))


_SEND_PG = _send_pg(patient=False)
_SEND_PG_PATIENT = _send_pg(patient=True)
_users = cast(Table, User.__table__)


def _ids(table: Table, where: ColumnElement[bool]) -> Any:
    # Ids are hex: a comma-joined list is one column of one row. The separator is a literal (a str would
    # become a bind rendered per execution, which a Prepared statement does not do).
    separator = cast(str, literal_column("','"))
    return select(func.aggregate_strings(table.c.user_id, separator)).where(where).scalar_subquery()


def _patient_column(column: str) -> Any:
    return select(_users.c[column]).where(_users.c.id == _threads.c.patient_id).scalar_subquery()


_REPLY_EXTRA: tuple[ColumnElement[Any], ...] = (
    _ids(_participants, (_participants.c.thread_id == _threads.c.id) & (_participants.c.kind == "member"))
    .label("members"),
    _ids(_pool_members, _pool_members.c.pool_id == _threads.c.pool_id).label("pool_members"),
    *(_patient_column(c).label(f"patient_{c}") for c in ("role", "email", "phone", "active")),
)
_FOLLOWERS = Prepared(union(
    select(_participants.c.user_id).where(_participants.c.thread_id == bindparam("b_thread"),
                                          _participants.c.kind == "member"),
    select(_pool_members.c.user_id).where(_pool_members.c.pool_id == bindparam("b_pool")),
))


def _append(session: Session, actor: Actor, thread: Any, body: str,
            attachment: tuple[str, str, bytes] | None = None,
            known: tuple[set[str], notify.Recipient | None] | None = None,
            screened: Any = routing.UNSCREENED) -> schemas.MessageOut:
    """``thread``: the ORM Thread or the row of ``policy.thread_facts_for_write``; ``known``: the
    thread's followers before this message and its patient's account, read with it."""
    rt = runtime_of(session)
    now = rt.clock.now()
    uses = 2 if attachment else 1
    message_id = new_id()
    cipher = ThreadCipher.open(rt.keyring, thread.id, thread.key_version, thread.data_key_wrapped)
    joined: bool | None = None
    clock: Any = routing.UNREAD
    if session.connection().dialect.name == "postgresql" and attachment is None:
        # One round trip: sequence, message and own receipt in one statement. The body is sealed before
        # the sequence is known, so the key's budget is checked first against the uses just read.
        if thread.data_key_uses + uses >= aead.SEAL_LIMIT:
            raise KeyExhausted("thread data key reached its seal budget")
        send = _SEND_PG_PATIENT if actor.is_patient else _SEND_PG
        sent = send.first(session, b_thread=thread.id, b_uses=uses, b_now=now, b_id=message_id,
                          b_sender=actor.user_id, b_body=cipher.seal_body(message_id, body), b_user=actor.user_id)
        if sent is None:
            raise NotFound()
        seq, total_uses, joined = int(sent.seq), int(sent.uses), bool(sent.own)
        if actor.is_patient:
            clock = sent if sent.clocked else None
        if total_uses >= aead.SEAL_LIMIT:  # another process sent meanwhile: this one is rolled back
            raise KeyExhausted("thread data key reached its seal budget")
    else:
        # UPDATE … RETURNING allocates the sequence number under the row lock, whichever process sends.
        bumped = _BUMP.first(session, b_thread=thread.id, b_uses=uses, b_now=now)
        if bumped is None:
            raise NotFound()
        seq, total_uses = int(bumped[0]), int(bumped[1])
        if total_uses >= aead.SEAL_LIMIT:
            raise KeyExhausted("thread data key reached its seal budget")
        _INSERT_MESSAGE.run(session, id=message_id, thread_id=thread.id, seq=seq, sender_id=actor.user_id,
                            created_at=now, kind="message", body_sealed=cipher.seal_body(message_id, body))
    attachments: list[schemas.AttachmentOut] = []
    if attachment is not None:
        name, content_type, data = attachment
        att_id = new_id()
        name_sealed, data_sealed = cipher.seal_file(att_id, name, data)
        session.execute(insert(Attachment).values(id=att_id, thread_id=thread.id, message_id=message_id,
                                                  content_type=content_type, size=len(data),
                                                  name_sealed=name_sealed, data_sealed=data_sealed))
        attachments.append(schemas.AttachmentOut(id=att_id, filename=name, content_type=content_type,
                                                 size=len(data)))
        record(session, action="messaging.attachment.upload", actor=actor, subject_type="attachment",
               subject_id=att_id, thread_id=thread.id, size=len(data))
    if joined is None:
        joined = bool(_MARK_OWN.run(session, b_thread=thread.id, b_user=actor.user_id, b_seq=seq, b_now=now))
    if not joined:
        _JOIN.run(session, b_thread=thread.id, b_user=actor.user_id, b_seq=seq, b_now=now)
    auto_reply: str | None = None
    if actor.is_patient:
        decision = routing.route_patient_reply(session, thread_id=thread.id, patient_id=actor.user_id, body=body,
                                               seq=seq, screened=screened, clock=clock)
        if decision is not None:
            routing.record_decision(session, thread_id=thread.id, message_id=message_id, decision=decision)
            auto_reply = decision.auto_reply
            # Re-triage moved the thread (pool, assignee, emergency): notify from what it is now.
            thread, known = session.get(Thread, thread.id) or thread, None
    record(session, action="messaging.message.send", actor=actor, subject_type="message", subject_id=message_id,
           thread_id=thread.id)
    # The sender is a member now (receipt above), whether or not they were before.
    _notify(session, thread, {"type": "message", "thread_id": thread.id, "message_id": message_id, "seq": seq},
            sender_id=actor.user_id, followers=known[0] | {actor.user_id} if known else None,
            patient=known[1] if known else None)
    if auto_reply:  # a reply that turned emergent gets the clinic's emergency answer at once
        auto_seq = int(_BUMP.first(session, b_thread=thread.id, b_uses=1, b_now=now)[0])
        auto_id = new_id()
        _INSERT_MESSAGE.run(session, id=auto_id, thread_id=thread.id, seq=auto_seq, sender_id=None, created_at=now,
                            kind="auto_reply", body_sealed=cipher.seal_body(auto_id, auto_reply))
        _notify(session, thread, {"type": "message", "thread_id": thread.id, "message_id": auto_id, "seq": auto_seq})
    me = schemas.Person(id=actor.user_id, username=actor.username, display_name=actor.display_name,
                        role=actor.role.value)
    return schemas.MessageOut(id=message_id, seq=seq, sender=me, created_at=now, kind="message", body=body,
                              attachments=attachments, auto_reply=auto_reply)


def mark_read(session: Session, *, actor: Actor, thread_id: str) -> None:
    """A read receipt up to the newest message, pushed to the thread's members."""
    thread = policy.thread_for_read(session, actor, thread_id)
    now = runtime_of(session).clock.now()
    count = thread.message_count
    updated = session.execute(
        update(Participant).where(Participant.thread_id == thread.id, Participant.user_id == actor.user_id)
        .values(last_read_seq=count, last_delivered_seq=count, last_read_at=now)
        .execution_options(synchronize_session=False))
    if not updated.rowcount:  # type: ignore[attr-defined]
        session.execute(insert(Participant).values(thread_id=thread.id, user_id=actor.user_id, kind="observer",
                                                   joined_at=now, last_read_seq=count, last_delivered_seq=count,
                                                   last_read_at=now))
    record(session, action="messaging.thread.read", actor=actor, subject_type="thread", subject_id=thread.id,
           seq=count)
    members = session.scalars(select(Participant.user_id).where(Participant.thread_id == thread.id,
                                                                Participant.kind == "member"))
    publish(session, members, {"type": "read", "thread_id": thread.id, "user_id": actor.user_id, "seq": count})


def set_urgent(session: Session, *, actor: Actor, thread_id: str, urgent: bool) -> None:
    thread = policy.thread_for_write(session, actor, thread_id)
    policy.require_staff(actor)
    thread.urgent = urgent
    record(session, action="messaging.thread.flag", actor=actor, subject_type="thread", subject_id=thread.id,
           urgent=urgent)
    _notify(session, thread, {"type": "thread_updated", "thread_id": thread.id})


def close_thread(session: Session, *, actor: Actor, thread_id: str) -> None:
    thread = policy.thread_for_write(session, actor, thread_id)
    policy.require_staff(actor)
    thread.status = "closed"
    record(session, action="messaging.thread.close", actor=actor, subject_type="thread", subject_id=thread.id)
    _notify(session, thread, {"type": "thread_updated", "thread_id": thread.id})
    from lockbox.fhir.service import thread_closed  # filed into the chart on close when configured so

    thread_closed(session, thread_id=thread.id, message_count=thread.message_count, patient_id=thread.patient_id)


def break_glass(session: Session, *, actor: Actor, thread_id: str, reason: str) -> None:
    policy.break_glass(session, actor, thread_id, reason)


def _notify(session: Session, thread: Any, event: dict[str, object], *, sender_id: str | None = None,
            followers: set[str] | None = None, patient: notify.Recipient | None = None) -> None:
    """Push to everyone who follows the thread: its members, its pool and the assignee; a new message
    also goes to the notify domain for those who are not looking. ``thread``: the Thread or a row of
    ``policy.thread_facts_for_write``; ``followers`` (members and pool) and ``patient``, when known."""
    users = set(followers) if followers is not None else \
        set(_FOLLOWERS.scalars(session, b_thread=thread.id, b_pool=thread.pool_id))
    if thread.assignee_id:
        users.add(thread.assignee_id)
    publish(session, users, event)
    message_id = event.get("message_id")
    if isinstance(message_id, str):
        notify.message_sent(session, thread_id=thread.id, message_id=message_id, sender_id=sender_id,
                            recipient_ids=sorted(users - {sender_id}), thread=thread, patient=patient)


# -- attachments ---------------------------------------------------------------------------------


def clean_filename(name: str) -> str:
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '<>:"|?*').strip(" .")
    return name[:200] or "attachment"


def sniff_type(data: bytes) -> str | None:
    try:
        mime = puremagic.from_string(data[:8192], mime=True)
    except (puremagic.PureError, ValueError):
        return None
    return mime if mime in ALLOWED_TYPES else None


def add_attachment(session: Session, *, actor: Actor, thread_id: str, filename: str, data: bytes,
                   body: str | None = None) -> schemas.MessageOut:
    """Attach a file as a new message. The type is read from the bytes; names and bytes are sealed."""
    thread = policy.thread_for_write(session, actor, thread_id)
    limit = runtime_of(session).settings.max_attachment_bytes
    if len(data) > limit:
        raise PayloadTooLarge(f"Attachments are limited to {limit // (1024 * 1024)} MiB.")
    if not data:
        raise InvalidInput("The attachment is empty.")
    content_type = sniff_type(data)
    if content_type is None:
        raise UnsupportedMediaType("Attach images (PNG, JPEG, GIF, WebP) or PDF documents.")
    text = (body or "").strip() or "(attachment)"
    return _append(session, actor, thread, text, attachment=(clean_filename(filename), content_type, data))


@dataclass(frozen=True)
class AttachmentFile:
    filename: str
    content_type: str
    data: bytes
    inline_safe: bool


def get_attachment(session: Session, *, actor: Actor, thread_id: str, attachment_id: str) -> AttachmentFile:
    thread = policy.thread_for_read(session, actor, thread_id)
    att = session.scalar(select(Attachment).where(Attachment.id == attachment_id, Attachment.thread_id == thread.id))
    if att is None:
        raise NotFound()
    cipher = ThreadCipher.open(runtime_of(session).keyring, thread.id, thread.key_version, thread.data_key_wrapped)
    record(session, action="messaging.attachment.download", actor=actor, subject_type="attachment",
           subject_id=att.id, thread_id=thread.id)
    return AttachmentFile(cipher.open_file_name(att.id, att.name_sealed), att.content_type,
                          cipher.open_file(att.id, att.data_sealed), att.content_type in INLINE_SAFE_TYPES)


def unread_total(session: Session, *, actor: Actor) -> int:
    now = runtime_of(session).clock.now()
    total = session.scalar(
        select(func.coalesce(func.sum(Thread.message_count - func.coalesce(Participant.last_read_seq, 0)), 0))
        .select_from(Thread)
        .outerjoin(Participant, (Participant.thread_id == Thread.id) & (Participant.user_id == actor.user_id))
        .where(policy.visible_threads(actor, now)))
    return int(total or 0)
