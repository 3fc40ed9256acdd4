"""The one place that decides who may read or write a thread (ARCHITECTURE section 1).

Every user-facing path to a thread goes through ``thread_for_read`` / ``thread_for_write`` or the
``visible_threads`` predicate; a refusal is ``NotFound`` so that existence does not leak.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, false, or_, select
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.access.models import BreakGlassGrant
from lockbox.audit.service import raise_alert, record
from lockbox.db.uow import runtime_of
from lockbox.directory.models import CareTeamMember, Pool, PoolMember
from lockbox.errors import Forbidden, InvalidInput, NotFound
from lockbox.identity.roles import CLINICAL_ROLES, NON_CLINICAL_STAFF, Role
from lockbox.messaging.models import Participant, Thread

BREAK_GLASS_HOURS = 8


def _is_member(actor: Actor) -> ColumnElement[bool]:
    return exists().where(
        Participant.thread_id == Thread.id, Participant.user_id == actor.user_id, Participant.kind == "member"
    )


def _in_my_pools(actor: Actor) -> ColumnElement[bool]:
    return exists().where(PoolMember.pool_id == Thread.pool_id, PoolMember.user_id == actor.user_id)


def _led_by_me(actor: Actor) -> ColumnElement[bool]:
    return exists().where(Pool.id == Thread.pool_id, Pool.lead_id == actor.user_id)


def _on_my_care_teams(actor: Actor) -> ColumnElement[bool]:
    return exists().where(CareTeamMember.care_team_id == Thread.care_team_id, CareTeamMember.user_id == actor.user_id)


def _break_glass(actor: Actor, now: datetime) -> ColumnElement[bool]:
    return exists().where(
        BreakGlassGrant.thread_id == Thread.id,
        BreakGlassGrant.user_id == actor.user_id,
        BreakGlassGrant.expires_at > now,
    )


def visible_threads(actor: Actor, now: datetime) -> ColumnElement[bool]:
    """SQL predicate on ``Thread``: the threads whose content ``actor`` may read."""
    if actor.role is Role.patient:
        return Thread.patient_id == actor.user_id
    if actor.role in CLINICAL_ROLES:
        return or_(
            _is_member(actor),
            Thread.assignee_id == actor.user_id,
            and_(Thread.pool_id.is_not(None), or_(_in_my_pools(actor), _led_by_me(actor))),
            and_(Thread.care_team_id.is_not(None), _on_my_care_teams(actor)),
            _break_glass(actor, now),
        )
    if actor.role in NON_CLINICAL_STAFF:
        # Front desk and billing see only what was routed to their pools or addressed to them.
        return or_(
            _is_member(actor),
            Thread.assignee_id == actor.user_id,
            and_(Thread.pool_id.is_not(None), or_(_in_my_pools(actor), _led_by_me(actor))),
        )
    # compliance and admin: metadata and audit only, never content.
    return false()


def thread_for_read(session: Session, actor: Actor, thread_id: str, *, lock: bool = False) -> Thread:
    """The thread if ``actor`` may read its content; otherwise NotFound, exactly as if it did not exist."""
    now = runtime_of(session).clock.now()
    query = select(Thread).where(Thread.id == thread_id, visible_threads(actor, now))
    thread = session.scalars(query).first()
    if thread is None:
        raise NotFound()
    return thread


def thread_for_write(session: Session, actor: Actor, thread_id: str) -> Thread:
    """Replying needs read access and a role that may send (compliance and admin never see content)."""
    return thread_for_read(session, actor, thread_id)


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
