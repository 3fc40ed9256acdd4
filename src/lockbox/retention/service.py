"""Retention: which threads are past their policy, purging them by crypto-shredding, and legal holds.

A purge first destroys the thread's wrapped data key (so every copy of its ciphertext, in free pages,
the WAL or a replica, is unreadable), then deletes the thread, whose messages, attachments, receipts
and routing rows go with it (ON DELETE CASCADE). Audit rows are never deleted: the chain stays whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import ColumnElement, and_, delete, exists, func, not_, or_, select, text, update
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.audit.service import record
from lockbox.config import Settings
from lockbox.db.uow import runtime_of
from lockbox.errors import Conflict, InvalidInput, NotFound
from lockbox.identity.models import User
from lockbox.identity.roles import Role
from lockbox.messaging.models import Message, Thread
from lockbox.retention.models import LegalHold

THREAD_KINDS = ("patient", "staff", "group")
HOLD_ROLES = frozenset({Role.compliance, Role.admin})
REASON_PURPOSE = "legal-hold-reason"


class RetentionPolicyError(InvalidInput):
    code = "invalid_retention_policy"


@dataclass(frozen=True)
class Policy:
    """Keep threads of ``kind`` for ``days`` after ``after`` (0 days: keep forever)."""

    kind: str
    days: int
    # "closed": only closed threads, counted from their last message; "last_message": any thread.
    after: Literal["closed", "last_message"]


class _PolicyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(ge=0, le=100 * 366)
    after: Literal["closed", "last_message"] | None = None


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient: _PolicyEntry | int | None = None
    staff: _PolicyEntry | int | None = None
    group: _PolicyEntry | int | None = None


def policies(settings: Settings) -> dict[str, Policy]:
    """The policy per thread kind: the settings' defaults, overridden kind by kind by the YAML file.

    Patient threads count from closing (an open conversation is never purged); clinician chat from
    its last message.
    """
    result = {
        "patient": Policy("patient", settings.retention_patient_days, "closed"),
        "staff": Policy("staff", settings.retention_staff_days, "last_message"),
        "group": Policy("group", settings.retention_group_days, "last_message"),
    }
    if settings.retention_policies is None:
        return result
    path = Path(settings.retention_policies)
    try:
        doc = _PolicyFile.model_validate(yaml.safe_load(path.read_text("utf-8")) or {})
    except OSError as exc:
        raise RetentionPolicyError(f"retention policy file {path} cannot be read: {exc.strerror}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise RetentionPolicyError(f"retention policy file {path} is not valid: {type(exc).__name__}") from None
    for kind in THREAD_KINDS:
        entry = getattr(doc, kind)
        if entry is None:
            continue
        if isinstance(entry, int):
            entry = _PolicyEntry(days=entry)
        result[kind] = Policy(kind, entry.days, entry.after or result[kind].after)
    return result


def policies_for(session: Session, *, actor: Actor) -> dict[str, Policy]:
    _require_holder(actor)
    return policies(runtime_of(session).settings)


# -- what is due ---------------------------------------------------------------------------------


def _not_held() -> ColumnElement[bool]:
    """No active hold on the thread or its patient (holds have no end date: they stand until released)."""
    active = LegalHold.released_at.is_(None)
    on_thread = exists().where(active, LegalHold.subject_type == "thread", LegalHold.subject_id == Thread.id)
    on_patient = exists().where(active, LegalHold.subject_type == "patient",
                                LegalHold.subject_id == Thread.patient_id)
    return and_(~on_thread, ~on_patient)


def _due(policy: Policy, now: datetime) -> ColumnElement[bool]:
    cutoff = now - timedelta(days=policy.days)
    clause = and_(Thread.kind == policy.kind, Thread.last_message_at < cutoff)
    if policy.after == "closed":
        clause = and_(clause, Thread.status == "closed")
    return clause


def due_threads(session: Session, *, rules: dict[str, Policy], limit: int, held: bool = False) -> list[str]:
    """Thread ids past their policy, oldest first; ``held=True`` lists those a legal hold keeps instead."""
    now = runtime_of(session).clock.now()
    kinds = [_due(p, now) for p in rules.values() if p.days > 0]
    if not kinds:
        return []
    guard = _not_held()
    query = select(Thread.id).where(or_(*kinds), not_(guard) if held else guard)
    return list(session.scalars(query.order_by(Thread.last_message_at, Thread.id).limit(limit)))


@dataclass
class Sweep:
    purged: list[str]
    more: bool  # the batch was full: another sweep should follow at once


def sweep(session: Session, *, rules: dict[str, Policy], limit: int) -> Sweep:
    """Purge up to ``limit`` threads past their policy, each audited; held threads are skipped."""
    ids = due_threads(session, rules=rules, limit=limit)
    for thread_id in ids:
        purge_thread(session, thread_id=thread_id, rules=rules)
    return Sweep(purged=ids, more=len(ids) == limit)


def purge_thread(session: Session, *, thread_id: str, rules: dict[str, Policy]) -> None:
    """Shred the data key, then delete the thread and everything that cascades from it."""
    row = session.execute(select(Thread.kind, Thread.patient_id).where(Thread.id == thread_id)).first()
    if row is None:
        return  # purged meanwhile by another worker
    if session.get_bind().dialect.name == "sqlite":
        # Freed pages are zeroed rather than left holding the old wrapped key and ciphertext.
        session.execute(text("PRAGMA secure_delete=ON"))
    messages = session.scalar(select(func.count()).select_from(Message).where(Message.thread_id == thread_id))
    # Overwrite before delete: even a copy of this row that outlives the delete (a dead tuple, a WAL
    # frame) no longer holds the key. Older backups still do; see docs/operations.md (retire old KEKs).
    session.execute(update(Thread).where(Thread.id == thread_id)
                    .values(data_key_wrapped=b"\0" * 60, key_version=0)
                    .execution_options(synchronize_session=False))
    session.execute(delete(Thread).where(Thread.id == thread_id).execution_options(synchronize_session=False))
    policy = rules.get(row.kind)
    record(session, action="retention.thread.purge", subject_type="thread", subject_id=thread_id,
           kind=row.kind, patient_id=row.patient_id, messages=int(messages or 0),
           policy_days=policy.days if policy else None)


# -- legal holds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    id: str
    subject_type: str
    subject_id: str
    reason: str
    placed_by: str | None
    placed_at: datetime
    released_at: datetime | None


def _require_holder(actor: Actor | None) -> None:
    # Everyone else: holds do not exist for them (404, like any resource one may not see).
    if actor is not None and actor.role not in HOLD_ROLES:
        raise NotFound()


def _subject(session: Session, *, patient: str | None, thread_id: str | None) -> tuple[str, str]:
    if (patient is None) == (thread_id is None):
        raise InvalidInput("Name either a patient or a thread.")
    if patient is not None:
        user_id = session.scalar(select(User.id).where(User.username == patient, User.role == Role.patient.value))
        if user_id is None:
            raise NotFound("No such patient.")
        return "patient", user_id
    assert thread_id is not None
    if session.get(Thread, thread_id) is None:
        raise NotFound("No such thread.")
    return "thread", thread_id


def place_hold(session: Session, *, actor: Actor | None, patient: str | None = None, thread_id: str | None = None,
               reason: str) -> Hold:
    """Hold a patient's threads (all of them, present and future) or one thread until released."""
    _require_holder(actor)
    reason = reason.strip()
    if not reason:
        raise InvalidInput("A legal hold needs a reason.")
    subject_type, subject_id = _subject(session, patient=patient, thread_id=thread_id)
    rt = runtime_of(session)
    hold = LegalHold(subject_type=subject_type, subject_id=subject_id, placed_at=rt.clock.now(),
                     placed_by=actor.user_id if actor else None, reason_sealed=b"")
    session.add(hold)
    session.flush()
    hold.reason_sealed = rt.keyring.seal_secret(REASON_PURPOSE, hold.id, reason.encode())
    record(session, action="retention.hold.place", actor=actor, subject_type="legal_hold", subject_id=hold.id,
           target_type=subject_type, target_id=subject_id, via="api" if actor else "cli")
    return _out(session, hold)


def release_hold(session: Session, *, actor: Actor | None, hold_id: str) -> Hold:
    _require_holder(actor)
    hold = session.get(LegalHold, hold_id)
    if hold is None:
        raise NotFound("No such legal hold.")
    if hold.released_at is not None:
        raise Conflict("This legal hold was already released.")
    hold.released_at = runtime_of(session).clock.now()
    hold.released_by = actor.user_id if actor else None
    record(session, action="retention.hold.release", actor=actor, subject_type="legal_hold", subject_id=hold.id,
           target_type=hold.subject_type, target_id=hold.subject_id, via="api" if actor else "cli")
    return _out(session, hold)


def list_holds(session: Session, *, actor: Actor | None, include_released: bool = False) -> list[Hold]:
    _require_holder(actor)
    query = select(LegalHold).order_by(LegalHold.placed_at.desc(), LegalHold.id)
    if not include_released:
        query = query.where(LegalHold.released_at.is_(None))
    return [_out(session, h) for h in session.scalars(query)]


def _out(session: Session, hold: LegalHold) -> Hold:
    reason = runtime_of(session).keyring.open_secret(REASON_PURPOSE, hold.id, hold.reason_sealed).decode()
    return Hold(hold.id, hold.subject_type, hold.subject_id, reason, hold.placed_by, hold.placed_at,
                hold.released_at)
