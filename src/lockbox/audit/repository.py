"""Queries over the audit log and alerts, newest first, paged by a seq (or time) cursor."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from lockbox.audit.models import Alert, AuditRow


def search(
    session: Session,
    *,
    actor_id: str | None,
    action_prefix: str | None,
    since: datetime | None,
    until: datetime | None,
    before_seq: int | None,
    limit: int,
) -> list[AuditRow]:
    query = select(AuditRow).order_by(AuditRow.seq.desc()).limit(limit)
    if actor_id is not None:
        query = query.where(AuditRow.actor_id == actor_id)
    if action_prefix:
        # autoescape: "_" and "%" in a prefix are literal characters, not LIKE wildcards.
        query = query.where(AuditRow.action.startswith(action_prefix, autoescape=True))
    query = _between(query, since, until)
    if before_seq is not None:
        query = query.where(AuditRow.seq < before_seq)
    return list(session.scalars(query))


def _between(query: Select[AuditRow], since: datetime | None, until: datetime | None) -> Select[AuditRow]:
    if since is not None:
        query = query.where(AuditRow.at >= since)
    if until is not None:
        query = query.where(AuditRow.at < until)
    return query


def stream(
    session: Session, *, since: datetime | None, until: datetime | None, batch: int = 2000
) -> Iterator[AuditRow]:
    """Oldest first, a batch at a time (keyset on seq), for exports of any size."""
    last = 0
    while True:
        query = _between(select(AuditRow).where(AuditRow.seq > last).order_by(AuditRow.seq).limit(batch),
                         since, until)
        rows = list(session.scalars(query))
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1].seq
        session.expunge_all()


def alerts(session: Session, *, acknowledged: bool | None, limit: int) -> list[Alert]:
    query = select(Alert).order_by(Alert.at.desc(), Alert.id).limit(limit)
    if acknowledged is True:
        query = query.where(Alert.acknowledged_at.is_not(None))
    elif acknowledged is False:
        query = query.where(Alert.acknowledged_at.is_(None))
    return list(session.scalars(query))
