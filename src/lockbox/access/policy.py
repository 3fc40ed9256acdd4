"""The one place that decides who may read or write a thread (ARCHITECTURE section 1).

Every user-facing path to a thread goes through ``thread_for_read`` / ``thread_for_write`` or the
``visible_threads`` predicate; a refusal is ``NotFound`` so that existence does not leak.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, and_, bindparam, case, exists, false, or_, select
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.access.models import BreakGlassGrant
from lockbox.audit.service import raise_alert, record
from lockbox.db.base import UTCDateTime
from lockbox.db.prepared import Prepared
from lockbox.db.uow import Credentials, runtime_of
from lockbox.directory.models import CareTeamMember, Pool, PoolMember
from lockbox.errors import Forbidden, InvalidInput, NotFound
from lockbox.identity import sessions
from lockbox.identity.models import Patient, User
from lockbox.identity.roles import CLINICAL_ROLES, NO_CONTENT_ROLES, NON_CLINICAL_STAFF, Role
from lockbox.messaging.models import Participant, Thread

BREAK_GLASS_HOURS = 8


UserRef = ColumnElement[str] | str
TimeRef = ColumnElement[datetime] | datetime


def _is_member(uid: UserRef) -> ColumnElement[bool]:
    return exists().where(Participant.thread_id == Thread.id, Participant.user_id == uid, Participant.kind == "member")


def _in_my_pools(uid: UserRef) -> ColumnElement[bool]:
    return exists().where(PoolMember.pool_id == Thread.pool_id, PoolMember.user_id == uid)


def _led_by_me(uid: UserRef) -> ColumnElement[bool]:
    return exists().where(Pool.id == Thread.pool_id, Pool.lead_id == uid)


def _on_my_care_teams(uid: UserRef) -> ColumnElement[bool]:
    return exists().where(CareTeamMember.care_team_id == Thread.care_team_id, CareTeamMember.user_id == uid)


def _break_glass(uid: UserRef, now: TimeRef) -> ColumnElement[bool]:
    return exists().where(BreakGlassGrant.thread_id == Thread.id, BreakGlassGrant.user_id == uid,
                          BreakGlassGrant.expires_at > now)


def _visible(role: Role, uid: UserRef, now: TimeRef) -> ColumnElement[bool]:
    if role is Role.patient:
        return Thread.patient_id == uid
    if role in CLINICAL_ROLES:
        return or_(
            _is_member(uid),
            Thread.assignee_id == uid,
            and_(Thread.pool_id.is_not(None), or_(_in_my_pools(uid), _led_by_me(uid))),
            and_(Thread.care_team_id.is_not(None), _on_my_care_teams(uid)),
            _break_glass(uid, now),
        )
    if role in NON_CLINICAL_STAFF:
        # Front desk and billing see only what was routed to their pools or addressed to them.
        return or_(
            _is_member(uid),
            Thread.assignee_id == uid,
            and_(Thread.pool_id.is_not(None), or_(_in_my_pools(uid), _led_by_me(uid))),
        )
    # compliance and admin: metadata and audit only, never content.
    return false()


def visible_threads(actor: Actor, now: datetime) -> ColumnElement[bool]:
    """SQL predicate on ``Thread``: the threads whose content ``actor`` may read."""
    return _visible(actor.role, actor.user_id, now)


@cache
def _thread_query(role: Role) -> Select[Thread]:
    # One statement per role, with the caller and the time as parameters: built once, reused on
    # every request (SQLAlchemy then finds its compiled form in the statement cache).
    return select(Thread).where(Thread.id == bindparam("thread_id"),
                                _visible(role, bindparam("uid"), bindparam("now", type_=UTCDateTime())))


def thread_for_read(session: Session, actor: Actor, thread_id: str) -> Thread:
    """The thread if ``actor`` may read its content; otherwise NotFound, exactly as if it did not exist."""
    now = runtime_of(session).clock.now()
    thread = session.scalars(_thread_query(actor.role),
                             {"thread_id": thread_id, "uid": actor.user_id, "now": now}).first()
    if thread is None:
        raise NotFound()
    return thread


_threads = cast(Table, Thread.__table__)
# What the send path needs of a thread (see thread_facts_for_write), as plain columns, not an ORM object.
_FACTS = tuple(_threads.c[name] for name in ("id", "patient_id", "care_team_id", "pool_id", "assignee_id", "urgent",
                                             "emergency", "key_version", "data_key_wrapped", "data_key_uses"))


@cache
def _thread_facts_query(role: Role, extra: tuple[ColumnElement[Any], ...] = ()) -> Prepared:
    # The same predicate as _thread_query, returning plain columns: the send path needs no ORM object.
    t = Thread
    return Prepared(
        select(*_FACTS, *extra)
        .where(t.id == bindparam("thread_id"), _visible(role, bindparam("uid"), bindparam("now", type_=UTCDateTime())))
    )


def thread_facts_for_write(session: Session, actor: Actor, thread_id: str, *,
                           extra: tuple[ColumnElement[Any], ...] = ()) -> Any:
    """``thread_for_write`` for the send path: the same check, answered with a plain row of the thread's
    id, patient_id, care_team_id, pool_id, assignee_id, urgent, emergency, key_version, data_key_wrapped,
    data_key_uses and the labelled ``extra`` columns (scalar subqueries on the thread: one round trip for all)."""
    now = runtime_of(session).clock.now()
    row = _thread_facts_query(actor.role, extra).first(session, thread_id=thread_id, uid=actor.user_id, now=now)
    if row is None:
        raise NotFound()
    require_sender(actor)
    return row


@cache
def _caller_and_thread_facts_query(extra: tuple[ColumnElement[Any], ...]) -> Prepared:
    # The caller's session, and the thread's facts joined only where _visible, for the caller's role, holds
    # (a CASE over the roles, each branch the predicate above): a thread the caller may not see comes back
    # as NULLs, so its facts never leave the database.
    uid, role = sessions.SESSION_USER.c.id, sessions.SESSION_USER.c.role
    now = bindparam("now", type_=UTCDateTime())
    # One branch per distinct predicate, the roles grouped by its SQL: whatever _visible decides per role.
    groups: dict[str, list[Role]] = {}
    for r in Role:
        groups.setdefault(str(_visible(r, uid, now)), []).append(r)
    visible = case(*((or_(*(role == r.value for r in group)), _visible(group[0], uid, now))
                     for group in groups.values()), else_=false())
    return Prepared(
        select(*sessions.SESSION_COLUMNS, *_FACTS, *extra)
        .select_from(sessions.SESSION_FROM.outerjoin(_threads, and_(_threads.c.id == bindparam("thread_id"), visible)))
        .where(sessions.SESSION_MATCH)
    )


def caller_and_thread_facts_for_write(session: Session, credentials: Credentials, thread_id: str, *,
                                      extra: tuple[ColumnElement[Any], ...] = ()) -> tuple[Actor, Any]:
    """``sessions.actor_for`` and ``thread_facts_for_write`` in one statement (on PostgreSQL, one round trip
    instead of two): the same session checks, then the same access check, in the same order."""
    now = runtime_of(session).clock.now()
    row = _caller_and_thread_facts_query(extra).first(
        session, token_hash=sessions.hash_token(credentials.token), thread_id=thread_id, now=now)
    actor = sessions.accept(session, row, credentials)
    if row.id is None:
        raise NotFound()
    require_sender(actor)
    return actor, row


def thread_for_write(session: Session, actor: Actor, thread_id: str) -> Thread:
    """Writing to a thread needs read access; compliance and admin never have it, so they get 404 too."""
    thread = thread_for_read(session, actor, thread_id)
    require_sender(actor)
    return thread


def require_sender(actor: Actor) -> None:
    if not actor.sees_content:
        raise Forbidden("Compliance and admin accounts do not send or read messages.")


def require_staff(actor: Actor) -> None:
    if actor.is_patient:
        raise NotFound()
    require_sender(actor)


def pool_for_member(session: Session, actor: Actor, pool_id: str) -> Pool:
    """A pool's queue is visible to its members and its lead."""
    pool = session.get(Pool, pool_id)
    if pool is None or actor.is_patient:
        raise NotFound()
    member = session.scalar(
        select(PoolMember.user_id).where(PoolMember.pool_id == pool_id, PoolMember.user_id == actor.user_id)
    )
    if member is None and pool.lead_id != actor.user_id:
        raise NotFound()
    return pool


def break_glass(session: Session, actor: Actor, thread_id: str, reason: str) -> BreakGlassGrant:
    """Emergency access outside the care relationship: clinical roles only, with a reason, audited and
    alerted every time."""
    if actor.role not in CLINICAL_ROLES:
        raise NotFound()
    reason = reason.strip()
    if len(reason) < 10:
        raise InvalidInput("State the clinical reason for break-glass access (at least 10 characters).")
    if session.get(Thread, thread_id) is None:
        raise NotFound()
    now = runtime_of(session).clock.now()
    grant = BreakGlassGrant(user_id=actor.user_id, thread_id=thread_id, reason=reason[:500], created_at=now,
                            expires_at=now + timedelta(hours=BREAK_GLASS_HOURS))
    session.add(grant)
    session.flush()
    record(session, action="access.break_glass.open", actor=actor, subject_type="thread", subject_id=thread_id,
           grant_id=grant.id)
    raise_alert(session, kind="break_glass", actor_id=actor.user_id, subject_type="thread", subject_id=thread_id,
                grant_id=grant.id)
    return grant


def _cares_for(session: Session, actor: Actor, patient_id: str) -> bool:
    """PCP, the patient's care team, or a thread together."""
    patient = session.get(Patient, patient_id)
    if patient is None:
        return False
    if patient.pcp_id == actor.user_id:
        return True
    if patient.care_team_id is not None and session.scalar(select(exists().where(
            CareTeamMember.care_team_id == patient.care_team_id, CareTeamMember.user_id == actor.user_id))):
        return True
    return bool(session.scalar(select(exists().where(
        Thread.patient_id == patient_id, Participant.thread_id == Thread.id,
        Participant.user_id == actor.user_id, Participant.kind == "member"))))


def patient_for_staff(session: Session, actor: Actor, username: str, *, write: bool) -> User:
    """A patient's record (consent, not messages) for staff. Clinicians who care for the patient and the
    front desk, which takes paper consent forms at check-in, may change it; compliance and admin may
    read it (metadata, never content). Anyone else finds no such patient."""
    if actor.is_patient:
        raise NotFound()
    patient = session.scalar(select(User).where(User.username == username, User.role == Role.patient))
    if patient is None:
        raise NotFound()
    if actor.role == Role.scheduler:
        return patient
    if actor.role in CLINICAL_ROLES and _cares_for(session, actor, patient.id):
        return patient
    if not write and actor.role in NO_CONTENT_ROLES:
        return patient
    raise NotFound()
