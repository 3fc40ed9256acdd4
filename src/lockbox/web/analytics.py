"""Clinic analytics from metadata only (who sent when, thread flags, routing decisions), never content.
Compliance and admin see the whole clinic; other staff their own messages and pools. Days are UTC days."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Date, and_, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from lockbox.access.actor import Actor
from lockbox.audit.service import record
from lockbox.db.uow import runtime_of
from lockbox.directory.models import CareTeam, CareTeamMember, Location, Pool
from lockbox.errors import NotFound
from lockbox.identity.models import User
from lockbox.identity.roles import NO_CONTENT_ROLES, STAFF_ROLES
from lockbox.messaging.models import Message, Thread
from lockbox.routing import service as routing
from lockbox.routing.models import RoutingDecision, RoutingState
from lockbox.routing.rules import Sla
from lockbox.web.views import my_pools

DEFAULT_DAYS = 14
MAX_DAYS = 90
REPORTS = ("volume", "response", "sla", "topic", "location")
# People who answer messages; compliance and admin never send any.
PROVIDER_ROLES = sorted(r.value for r in STAFF_ROLES - NO_CONTENT_ROLES)
# Upper bounds (seconds) of the response-time buckets; the last is open.
BUCKETS: tuple[tuple[float, str], ...] = (
    (3600, "under 1 h"), (4 * 3600, "1 to 4 h"), (24 * 3600, "4 to 24 h"), (math.inf, "over 24 h"),
)
PRIORITIES = ("emergency", "urgent", "routine")


@dataclass(frozen=True)
class Scope:
    everyone: bool
    user_id: str
    pool_ids: tuple[str, ...]
    team_ids: tuple[str, ...] = ()

    def threads(self) -> ColumnElement[bool]:
        """The patient threads a clinician's figures cover: their pools', and their care teams' unpooled ones."""
        return or_(Thread.pool_id.in_(self.pool_ids),
                   and_(Thread.pool_id.is_(None), Thread.care_team_id.in_(self.team_ids)))


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    @property
    def days(self) -> list[date]:
        first = self.since.date()
        return [first + timedelta(days=i) for i in range((self.until - self.since).days)]


@dataclass
class Volume:
    days: list[date]
    providers: list[tuple[str, str]]  # (user id, display name), busiest first
    counts: dict[tuple[str, date], int]

    def total(self, provider_id: str) -> int:
        return sum(n for (pid, _), n in self.counts.items() if pid == provider_id)


# Threads routed to no pool (the care team's fallback) are counted together under this name.
NO_POOL = "Care team (no pool)"


@dataclass
class ResponseStats:
    pool: str | None
    pool_name: str
    priority: str
    waits: list[float] = field(default_factory=list)  # seconds from the patient's message to the first staff reply
    waiting: int = 0  # patient messages still without a reply

    @property
    def answered(self) -> int:
        return len(self.waits)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.waits) if self.waits else None

    @property
    def p90_s(self) -> float | None:
        if not self.waits:
            return None
        ordered = sorted(self.waits)
        return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank

    @property
    def buckets(self) -> list[int]:
        counts = [0] * len(BUCKETS)
        for w in self.waits:
            counts[next(i for i, (bound, _) in enumerate(BUCKETS) if w < bound)] += 1
        return counts


@dataclass
class SlaStats:
    """Routed threads of a pool and priority: first staff reply by the due time of the first message's
    response clock (met), after it or not yet though it has passed (missed), or not yet due (waiting)."""

    pool: str | None
    pool_name: str
    priority: str
    slas: set[str] = field(default_factory=set)
    met: int = 0
    missed: int = 0
    waiting: int = 0

    @property
    def decided(self) -> int:
        return self.met + self.missed

    @property
    def share(self) -> float | None:
        return 100 * self.met / self.decided if self.decided else None


@dataclass
class Report:
    scope: Scope
    window: Window
    volume: Volume
    responses: list[ResponseStats]
    topics: list[tuple[str, int]]
    locations: list[tuple[str, int]]
    sla: list[SlaStats] = field(default_factory=list)


def scope_for(session: Session, actor: Actor) -> Scope:
    if actor.role in NO_CONTENT_ROLES:
        return Scope(True, actor.user_id, ())
    if actor.is_patient:
        raise NotFound()
    teams = tuple(session.scalars(select(CareTeamMember.care_team_id).where(CareTeamMember.user_id == actor.user_id)))
    return Scope(False, actor.user_id, tuple(p.id for p in my_pools(session, actor=actor)), teams)


def window_for(now: datetime, days: int) -> Window:
    """The last ``days`` whole UTC days, today included."""
    days = max(1, min(days, MAX_DAYS))
    until = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)
    return Window(until - timedelta(days=days), until)


def _day(session: Session, column: Any) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)  # SQLite keeps naive UTC text: date() takes its day


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def message_volume(session: Session, *, scope: Scope, window: Window) -> Volume:
    day = _day(session, Message.created_at)
    query = (
        select(Message.sender_id, User.display_name, day.label("day"), func.count().label("n"))
        .join(User, User.id == Message.sender_id)
        .where(User.role.in_(PROVIDER_ROLES), Message.created_at >= window.since, Message.created_at < window.until)
        .group_by(Message.sender_id, User.display_name, day)
    )
    if not scope.everyone:
        query = query.where(Message.sender_id == scope.user_id)
    counts: dict[tuple[str, date], int] = {}
    names: dict[str, str] = {}
    for row in session.execute(query):
        counts[(row.sender_id, _as_date(row.day))] = int(row.n)
        names[row.sender_id] = row.display_name
    volume = Volume(window.days, [], counts)
    volume.providers = sorted(names.items(), key=lambda p: (-volume.total(p[0]), p[1]))
    return volume


def _priority(urgent: bool, emergency: bool) -> str:
    return "emergency" if emergency else "urgent" if urgent else "routine"


def response_times(session: Session, *, scope: Scope, window: Window) -> list[ResponseStats]:
    """Per pool and priority: from each patient message (the first of a run) to the next staff message."""
    query = (
        select(Message.thread_id, Message.sender_id, Message.created_at, Thread.pool_id, Thread.patient_id,
               Thread.urgent, Thread.emergency)
        .join(Thread, Thread.id == Message.thread_id)
        .where(Thread.patient_id.is_not(None), Message.kind == "message", Message.created_at >= window.since)
        .order_by(Message.thread_id, Message.seq)
    )
    if not scope.everyone:
        query = query.where(scope.threads())
    stats: dict[tuple[str | None, str], ResponseStats] = {}
    names = {k: v for k, v in session.execute(select(Pool.id, Pool.name))}

    def bucket(row: Any) -> ResponseStats:
        key = (row.pool_id, _priority(row.urgent, row.emergency))
        if key not in stats:
            name = names.get(row.pool_id, row.pool_id) if row.pool_id else NO_POOL
            stats[key] = ResponseStats(row.pool_id, name, key[1])
        return stats[key]

    thread: str | None = None
    pending: Any = None
    for row in session.execute(query):
        if row.thread_id != thread:
            if pending is not None:
                bucket(pending).waiting += 1
            thread, pending = row.thread_id, None
        if row.sender_id == row.patient_id:
            if pending is None and row.created_at < window.until:
                pending = row
        elif row.sender_id is not None and pending is not None:
            bucket(pending).waits.append((row.created_at - pending.created_at).total_seconds())
            pending = None
    if pending is not None:
        bucket(pending).waiting += 1
    return sorted(stats.values(), key=lambda s: (s.pool_name, PRIORITIES.index(s.priority)))


def sla_compliance(session: Session, *, scope: Scope, window: Window, now: datetime) -> list[SlaStats]:
    """Per pool and priority, from routing's response clocks: each routed thread started in the window is
    held to the SLA its first decision armed (a later re-triage has its own clock, not counted here)."""
    query = (select(RoutingState.thread_id, RoutingState.priority, RoutingState.sla, Thread.pool_id)
             .join(Thread, Thread.id == RoutingState.thread_id)
             .where(Thread.created_at >= window.since, Thread.created_at < window.until))
    if not scope.everyone:
        query = query.where(scope.threads())
    clocks = list(session.execute(query))
    if not clocks:
        return []
    ids = [c.thread_id for c in clocks]
    first: dict[str, RoutingDecision] = {}
    for row in session.scalars(select(RoutingDecision).where(RoutingDecision.thread_id.in_(ids),
                                                             RoutingDecision.trigger == "message")
                               .order_by(RoutingDecision.created_at.desc(), RoutingDecision.id.desc())):
        first[row.thread_id] = row  # oldest last, so it stays
    answered = dict(session.execute(
        select(Message.thread_id, func.min(Message.created_at)).join(User, User.id == Message.sender_id)
        .where(Message.thread_id.in_(ids), Message.kind == "message", User.role.in_(PROVIDER_ROLES))
        .group_by(Message.thread_id)).all())
    rules = routing.rules_for(session, alerts=False)
    names = {k: v for k, v in session.execute(select(Pool.id, Pool.name))}
    stats: dict[tuple[str | None, str], SlaStats] = {}
    for c in clocks:
        dec = first.get(c.thread_id)
        if dec is None:
            continue
        sla_text = str((dec.phases or {}).get("rules", {}).get("sla") or c.sla)
        try:
            due = rules.due(dec.created_at, Sla.parse(sla_text))
        except ValueError:
            continue
        priority = dec.urgency if dec.urgency in PRIORITIES else c.priority
        key = (c.pool_id, priority)
        if key not in stats:
            stats[key] = SlaStats(c.pool_id, names.get(c.pool_id, c.pool_id) if c.pool_id else NO_POOL, priority)
        st = stats[key]
        st.slas.add(sla_text)
        at = answered.get(c.thread_id)
        if at is not None and at <= due:
            st.met += 1
        elif at is not None or now > due:
            st.missed += 1
        else:
            st.waiting += 1
    return sorted(stats.values(), key=lambda s: (s.pool_name, PRIORITIES.index(s.priority)
                                                 if s.priority in PRIORITIES else 9))


def topic_share(session: Session, *, scope: Scope, window: Window) -> list[tuple[str, int]]:
    """Routed patient messages by topic (one routing decision per routed message)."""
    n = func.count().label("n")
    query = (select(RoutingDecision.topic, n)
             .where(RoutingDecision.created_at >= window.since, RoutingDecision.created_at < window.until)
             .group_by(RoutingDecision.topic).order_by(n.desc(), RoutingDecision.topic))
    if not scope.everyone:
        query = query.join(Thread, Thread.id == RoutingDecision.thread_id).where(scope.threads())
    return [(r.topic, int(r.n)) for r in session.execute(query)]


def location_share(session: Session, *, scope: Scope, window: Window) -> list[tuple[str, int]]:
    """New patient threads by the location of the patient's care team."""
    n = func.count(Thread.id).label("n")
    query = (select(Location.name, n).select_from(Thread)
             .outerjoin(CareTeam, CareTeam.id == Thread.care_team_id)
             .outerjoin(Location, Location.id == CareTeam.location_id)
             .where(Thread.patient_id.is_not(None), Thread.created_at >= window.since,
                    Thread.created_at < window.until)
             .group_by(Location.name).order_by(n.desc(), Location.name))
    if not scope.everyone:
        query = query.where(scope.threads())
    return [(r.name or "No care team", int(r.n)) for r in session.execute(query)]


def report(session: Session, *, actor: Actor, days: int = DEFAULT_DAYS) -> Report:
    scope = scope_for(session, actor)
    now = runtime_of(session).clock.now()
    window = window_for(now, days)
    return Report(scope, window, message_volume(session, scope=scope, window=window),
                  response_times(session, scope=scope, window=window),
                  topic_share(session, scope=scope, window=window),
                  location_share(session, scope=scope, window=window),
                  sla_compliance(session, scope=scope, window=window, now=now))


# -- CSV export ------------------------------------------------------------------------------------


def _cell(value: object) -> object:
    # A display name starting with = + - @ would run as a formula in a spreadsheet.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _minutes(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f}"


def _rows(rep: Report, name: str) -> list[list[object]]:
    if name == "volume":
        out: list[list[object]] = [["day", "provider", "messages"]]
        for pid, pname in rep.volume.providers:
            out += [[d.isoformat(), pname, rep.volume.counts.get((pid, d), 0)] for d in rep.volume.days]
        return out
    if name == "response":
        out = [["pool", "priority", "answered", "waiting", "median_minutes", "p90_minutes",
                *(f"answered_{label.replace(' ', '_')}" for _, label in BUCKETS)]]
        out += [[s.pool_name, s.priority, s.answered, s.waiting, _minutes(s.median_s), _minutes(s.p90_s), *s.buckets]
                for s in rep.responses]
        return out
    if name == "sla":
        out = [["pool", "priority", "sla", "met", "missed", "waiting", "met_percent"]]
        out += [[s.pool_name, s.priority, " ".join(sorted(s.slas)), s.met, s.missed, s.waiting,
                 "" if s.share is None else f"{s.share:.1f}"] for s in rep.sla]
        return out
    pairs = rep.topics if name == "topic" else rep.locations
    total = sum(n for _, n in pairs) or 1
    out = [[name, "count", "share_percent"]]
    out += [[k, n, f"{100 * n / total:.1f}"] for k, n in pairs]
    return out


def export_csv(session: Session, *, actor: Actor, report_name: str, days: int = DEFAULT_DAYS) -> tuple[str, str]:
    """A report as CSV (file name, text); the export itself is audited."""
    if report_name not in REPORTS:
        raise NotFound()
    rep = report(session, actor=actor, days=days)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in _rows(rep, report_name):
        writer.writerow([_cell(v) for v in row])
    record(session, action="analytics.report.export", actor=actor, subject_type="report", subject_id=report_name,
           days=(rep.window.until - rep.window.since).days, scope="clinic" if rep.scope.everyone else "own")
    first, last = rep.window.since.date(), rep.window.until.date() - timedelta(days=1)
    return f"lockbox-{report_name}-{first.isoformat()}-{last.isoformat()}.csv", buf.getvalue()
