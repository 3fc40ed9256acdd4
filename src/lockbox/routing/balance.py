"""Routing's second phase inside a pool: who is eligible (role, location, on duty or on call) and who of
them takes the thread (the patient's care team first, then the least open work, then whoever waited
longest since their last assignment).

Duty: a staff member is on duty during the clinic hours the rules file gives their location (or its
"default" week) unless they switched themselves off duty (``Responder.available``); whoever holds an
``OnCallShift`` for the pool covering now is on call for it, whatever the hour, their role or location.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from lockbox.directory.models import CareTeamMember, OnCallShift, Pool, PoolMember
from lockbox.identity.models import User
from lockbox.identity.roles import NO_CONTENT_ROLES, Role
from lockbox.messaging.models import Thread
from lockbox.routing.models import Responder
from lockbox.routing.rules import RuleSet

# Open work: an emergency weighs as much as ten routine threads, an urgent one three.
WEIGHTS = {"emergency": 10, "urgent": 3, "routine": 1}
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Candidate:
    user_id: str
    on_team: bool = False
    on_duty: bool = False
    on_call: bool = False
    load: int = 0
    last_assigned_at: datetime | None = None

    @property
    def eligible(self) -> bool:
        return self.on_duty or self.on_call


@dataclass(frozen=True)
class Pick:
    assignee_id: str | None
    reason: str  # care_team | least_load | on_call | nobody_eligible | no_candidates
    candidates: int
    eligible: int


def choose(candidates: Sequence[Candidate], *, exclude: Iterable[str] = ()) -> Pick:
    """Pure: on duty before on call, the care team first, then least weighted open work, then least
    recently assigned."""
    excluded = set(exclude)
    pool = [c for c in candidates if c.user_id not in excluded]
    eligible = [c for c in pool if c.eligible]
    if not eligible:
        return Pick(None, "no_candidates" if not pool else "nobody_eligible", len(pool), 0)
    # Those on duty before those only on call (a page at night is not for routine overflow); within
    # each, the care team first.
    best = min(eligible, key=lambda c: (not c.on_duty, not c.on_team, c.load, c.last_assigned_at or _NEVER,
                                        c.user_id))
    reason = "care_team" if best.on_team else ("least_load" if best.on_duty else "on_call")
    return Pick(best.user_id, reason, len(pool), len(eligible))


def on_call_now(session: Session, pool_ids: Sequence[str], now: datetime) -> list[tuple[str, str]]:
    """(pool id, user id) of the shifts covering ``now``."""
    if not pool_ids:
        return []
    rows = session.execute(
        select(OnCallShift.pool_id, OnCallShift.user_id).join(User, User.id == OnCallShift.user_id)
        .where(OnCallShift.pool_id.in_(pool_ids), OnCallShift.starts_at <= now, OnCallShift.ends_at > now,
               User.active.is_(True))
        .order_by(OnCallShift.starts_at, OnCallShift.id))
    return [(r[0], r[1]) for r in rows]


def open_load(session: Session, user_ids: Sequence[str]) -> dict[str, int]:
    if not user_ids:
        return {}
    weight = case((Thread.emergency.is_(True), WEIGHTS["emergency"]), (Thread.urgent.is_(True), WEIGHTS["urgent"]),
                  else_=WEIGHTS["routine"])
    rows = session.execute(
        select(Thread.assignee_id, func.sum(weight)).where(Thread.status == "open", Thread.assignee_id.in_(user_ids))
        .group_by(Thread.assignee_id))
    return {r[0]: int(r[1] or 0) for r in rows}


def _responders(session: Session, user_ids: Sequence[str]) -> dict[str, Responder]:
    if not user_ids:
        return {}
    return {r.user_id: r for r in session.scalars(select(Responder).where(Responder.user_id.in_(user_ids)))}


def candidates(
    session: Session,
    *,
    rules: RuleSet,
    now: datetime,
    pool: Pool | None,
    care_team_id: str | None,
    location_id: str | None,
) -> list[Candidate]:
    """Everyone who could take a thread of ``pool`` (or of the care team when there is no pool)."""
    people: dict[str, tuple[str, str | None]] = {}  # user id -> (role, location)
    if pool is not None:
        q = (select(User.id, User.role, User.location_id).join(PoolMember, PoolMember.user_id == User.id)
             .where(PoolMember.pool_id == pool.id, User.active.is_(True)))
        for uid, role, loc in session.execute(q):
            if pool.roles and role not in pool.roles:
                continue
            if location_id is not None and loc is not None and loc != location_id:
                continue
            people[uid] = (role, loc)
        on_call = {uid for _, uid in on_call_now(session, [pool.id], now)}
    else:
        on_call = set()
    team: set[str] = set()
    if care_team_id is not None:
        rows = session.execute(
            select(User.id, User.role, User.location_id).join(CareTeamMember, CareTeamMember.user_id == User.id)
            .where(CareTeamMember.care_team_id == care_team_id, User.active.is_(True)))
        for uid, role, loc in rows:
            if pool is None and role not in NO_CONTENT_ROLES and role != Role.patient:
                people[uid] = (role, loc)  # no pool: the care team itself is the pool
            if uid in people:
                team.add(uid)
    members = set(people)  # only they can be on duty for this pool; the others only cover it on call
    ids = sorted(members | on_call)
    if on_call - members:
        for uid, role, loc in session.execute(select(User.id, User.role, User.location_id)
                                              .where(User.id.in_(on_call - set(people)))):
            people[uid] = (role, loc)
    responders = _responders(session, ids)
    load = open_load(session, ids)
    out = []
    for uid in ids:
        _, loc = people[uid]
        r = responders.get(uid)
        available = r.available if r is not None else True
        out.append(Candidate(
            user_id=uid, on_team=uid in team, on_duty=uid in members and available and rules.is_open(loc, now),
            on_call=uid in on_call,
            load=load.get(uid, 0), last_assigned_at=r.last_assigned_at if r is not None else None,
        ))
    return out


def is_eligible(session: Session, *, rules: RuleSet, now: datetime, user_id: str, pool_id: str | None) -> bool:
    """Whether ``user_id`` may keep a thread of ``pool_id`` now: on duty, or on call for that pool."""
    if pool_id is not None and any(uid == user_id for _, uid in on_call_now(session, [pool_id], now)):
        return True
    row = session.execute(select(User.active, User.location_id).where(User.id == user_id)).first()
    if row is None or not row[0]:
        return False
    r = session.get(Responder, user_id)
    return (r.available if r is not None else True) and rules.is_open(row[1], now)


def note_assignment(session: Session, user_id: str, now: datetime) -> None:
    r = session.get(Responder, user_id)
    if r is None:
        session.add(Responder(user_id=user_id, available=True, last_assigned_at=now))
    else:
        r.last_assigned_at = now
