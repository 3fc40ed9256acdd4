"""Enqueue, claim, finish and retry jobs. Claims use FOR UPDATE SKIP LOCKED on PostgreSQL, so each
job runs once however many workers race; on SQLite the single writer serialises claims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from lockbox.db.uow import Runtime, after_commit, runtime_of
from lockbox.identifiers import require_identifiers
from lockbox.jobs.models import Job

LEASE_S = 120
MAX_BACKOFF_S = 3600


@dataclass(frozen=True)
class Handler:
    """``run(session, payload)`` runs inside a unit of work that also marks the job done, so its
    database effects happen exactly once. ``external=True`` handlers run outside any transaction
    (sending mail, calling an EHR) and must be idempotent: a worker that dies mid-run retries.
    ``on_dead(session, payload, error)``, if given, runs in the unit of work that moves the job to the dead
    letters, so what the job stood for (a filing "queued") can say it gave up."""

    kind: str
    run: Callable[..., Any]
    external: bool = False
    on_dead: Callable[[Session, dict[str, Any], str], None] | None = None


_handlers: dict[str, Handler] = {}
_wakeups: list[Callable[[], None]] = []


# Each domain with background work registers its handlers in its ``tasks`` module.
TASK_MODULES = ("lockbox.notify.tasks", "lockbox.routing.tasks", "lockbox.retention.tasks", "lockbox.gateway.tasks",
                "lockbox.fhir.tasks")


def load_handlers() -> None:
    """Import every domain's tasks, so any process that runs workers knows every job kind."""
    import importlib

    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def register(kind: str, run: Callable[..., Any], *, external: bool = False,
             on_dead: Callable[[Session, dict[str, Any], str], None] | None = None) -> None:
    _handlers[kind] = Handler(kind, run, external, on_dead)


def handler_for(kind: str) -> Handler | None:
    return _handlers.get(kind)


def on_enqueue(callback: Callable[[], None]) -> None:
    """Workers in this process are woken after a commit that enqueued something."""
    _wakeups.append(callback)


def off_enqueue(callback: Callable[[], None]) -> None:
    if callback in _wakeups:
        _wakeups.remove(callback)


def _wake_workers(_runtime: Runtime) -> None:
    for wake in list(_wakeups):
        wake()


def _check_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return require_identifiers(payload, what="job payload", max_len=200)


def enqueue(
    session: Session,
    *,
    kind: str,
    payload: dict[str, Any] | None = None,
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 8,
) -> str | None:
    """Queue a job in the caller's unit of work; it exists only if that unit commits.

    Returns the job id, or None when a job with ``dedupe_key`` is already queued.
    """
    now = runtime_of(session).clock.now()
    if dedupe_key is not None and session.scalar(select(Job.id).where(Job.dedupe_key == dedupe_key)):
        return None
    job = Job(kind=kind, payload=_check_payload(payload or {}), dedupe_key=dedupe_key, created_at=now,
              run_at=run_at or now, attempts=0, max_attempts=max_attempts)
    session.add(job)
    session.flush()
    after_commit(session, _wake_workers)
    return job.id


def run_job(session: Session, *, job_id: str, kind: str, payload: dict[str, Any], worker: str) -> None:
    """A claimed job whose handler works in the database: it and the job's end commit together."""
    handler = handler_for(kind)
    if handler is None or handler.external:
        raise LookupError(f"no in-database handler for job kind {kind!r}")
    handler.run(session, payload)
    finish(session, job_id=job_id, worker=worker)


@dataclass(frozen=True)
class Claimed:
    id: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


def claim(session: Session, *, worker: str, limit: int = 10, kinds: list[str] | None = None) -> list[Claimed]:
    """Lease up to ``limit`` due jobs to ``worker``. An expired lease (a dead worker) is claimable again."""
    now = runtime_of(session).clock.now()
    due = (
        select(Job.id)
        .where(Job.done_at.is_(None), Job.failed_at.is_(None), Job.run_at <= now,
               or_(Job.locked_until.is_(None), Job.locked_until < now))
        .order_by(Job.run_at, Job.id)
        .limit(limit)
    )
    if kinds is not None:
        due = due.where(Job.kind.in_(kinds))
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list(session.scalars(due))
    if not ids:
        return []
    session.execute(
        update(Job).where(Job.id.in_(ids))
        .values(locked_by=worker, locked_until=now + timedelta(seconds=LEASE_S), attempts=Job.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(select(Job.id, Job.kind, Job.payload, Job.attempts, Job.max_attempts)
                           .where(Job.id.in_(ids)).order_by(Job.run_at, Job.id))
    return [Claimed(r.id, r.kind, dict(r.payload or {}), r.attempts, r.max_attempts) for r in rows]


def finish(session: Session, *, job_id: str, worker: str) -> bool:
    """Mark done, if this worker still holds the lease (a job re-leased to another worker is theirs)."""
    now = runtime_of(session).clock.now()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.locked_by == worker, Job.done_at.is_(None))
        .values(done_at=now, locked_until=None).execution_options(synchronize_session=False))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail(session: Session, *, job_id: str, worker: str, error: str) -> None:
    """Retry later with exponential back-off, or move to the dead letters after ``max_attempts``."""
    now = runtime_of(session).clock.now()
    job = session.get(Job, job_id)
    if job is None or job.locked_by != worker or job.done_at is not None:
        return
    job.last_error = error[:200]
    job.locked_until = None
    if job.attempts >= job.max_attempts:
        job.failed_at = now
        handler = _handlers.get(job.kind)
        if handler is not None and handler.on_dead is not None:
            handler.on_dead(session, dict(job.payload or {}), error[:200])
    else:
        job.run_at = now + timedelta(seconds=min(MAX_BACKOFF_S, 2 ** job.attempts))


def dead_letters(session: Session, *, limit: int = 100) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.failed_at.is_not(None))
                                .order_by(Job.failed_at.desc()).limit(limit)))


def pending_count(session: Session) -> int:
    from sqlalchemy import func

    return int(session.scalar(select(func.count()).select_from(Job)
                              .where(Job.done_at.is_(None), Job.failed_at.is_(None))) or 0)
