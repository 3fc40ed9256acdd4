"""Recording audit entries and alerts inside the unit of work whose change they describe, and the
security officer's view of them: search, alerts, acknowledgement, verification and export.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy.orm import Session

from lockbox.audit import repository
from lockbox.audit.chain import Entry
from lockbox.audit.headfile import HeadFile
from lockbox.audit.models import Alert
from lockbox.audit.schemas import AlertOut, AuditRowOut
from lockbox.audit.verify import Report, verify
from lockbox.db.uow import runtime_of
from lockbox.errors import NotFound
from lockbox.identifiers import require_identifiers
from lockbox.identity.roles import Role

if TYPE_CHECKING:
    from lockbox.access.actor import Actor

# Who may read the audit trail and alerts; to anyone else these resources do not exist.
AUDITOR_ROLES = frozenset({Role.compliance, Role.admin})
MAX_PAGE = 1000

_ACTION = re.compile(r"^[a-z_]+(\.[a-z_]+){1,3}$")


def _check_details(details: dict[str, Any]) -> dict[str, Any]:
    return require_identifiers(details, what="audit detail")


def record(
    session: Session,
    *,
    action: str,
    actor: Actor | None = None,
    actor_id: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    outcome: str = "success",
    **details: Any,
) -> None:
    """Queue an audit entry; it is chained and written in the same commit as the change, or not at all.

    ``action`` is ``domain.subject.action``; details are identifiers only (checked).
    """
    if not _ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} is not domain.subject.action")
    entry = Entry(
        at=runtime_of(session).clock.now(),
        action=action,
        actor_id=actor.user_id if actor else actor_id,
        session_id=actor.session_id if actor else None,
        subject_type=subject_type,
        subject_id=subject_id,
        outcome=outcome,
        details=_check_details(details),
    )
    session.info.setdefault("audit", []).append(entry)


def raise_alert(
    session: Session,
    *,
    kind: str,
    actor_id: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    **details: Any,
) -> Alert:
    """An alert for the security officer (break-glass, failed-login bursts …), itself audited."""
    alert = Alert(
        kind=kind,
        at=runtime_of(session).clock.now(),
        actor_id=actor_id,
        subject_type=subject_type,
        subject_id=subject_id,
        details=_check_details(details),
    )
    session.add(alert)
    session.flush()
    record(session, action="audit.alert.raise", actor_id=actor_id, subject_type="alert", subject_id=alert.id,
           kind=kind)
    return alert


# -- the security officer's view ---------------------------------------------------------------


def _require_auditor(actor: Actor) -> None:
    if actor.role not in AUDITOR_ROLES:
        raise NotFound()


def _utc(value: datetime | None) -> datetime | None:
    """A bound in UTC. A time without a zone means UTC, as every stored time does; a bound beyond the
    representable range (year 1 east of UTC) is no bound at all."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return None


def search_log(
    session: Session,
    *,
    actor: Actor,
    actor_id: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_seq: int | None = None,
    limit: int = 100,
) -> list[AuditRowOut]:
    """Audit rows, newest first, filtered by who acted, an action prefix (``identity.login``) and time."""
    _require_auditor(actor)
    rows = repository.search(session, actor_id=actor_id, action_prefix=action, since=_utc(since),
                             until=_utc(until), before_seq=before_seq, limit=max(1, min(limit, MAX_PAGE)))
    return [AuditRowOut.model_validate(r) for r in rows]


def list_alerts(
    session: Session, *, actor: Actor, acknowledged: bool | None = None, limit: int = 100
) -> list[AlertOut]:
    _require_auditor(actor)
    rows = repository.alerts(session, acknowledged=acknowledged, limit=max(1, min(limit, MAX_PAGE)))
    return [AlertOut.model_validate(a) for a in rows]


def acknowledge_alert(session: Session, *, actor: Actor, alert_id: str) -> None:
    """Mark an alert handled; acknowledging it again changes nothing and records nothing."""
    _require_auditor(actor)
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFound()
    if alert.acknowledged_at is not None:
        return
    alert.acknowledged_at = runtime_of(session).clock.now()
    record(session, action="audit.alert.acknowledge", actor=actor, subject_type="alert", subject_id=alert.id,
           kind=alert.kind)


def verify_log(session: Session, *, actor: Actor) -> Report:
    """The whole chain checked against its checkpoints and the external head file."""
    _require_auditor(actor)
    return verify_chain(session)


def verify_chain(session: Session) -> Report:
    rt = runtime_of(session)
    # The head first, before this session reads a row: then it can never be ahead of what we see.
    head = HeadFile(rt.settings.audit_head_file, rt.keyring).latest()
    return verify(session, rt.keyring, head)


def export_log(session: Session, *, out: TextIO, since: datetime | None = None, until: datetime | None = None) -> int:
    """Write rows oldest first as JSON lines (identifiers only, like the rows); returns how many."""
    count = 0
    for row in repository.stream(session, since=_utc(since), until=_utc(until)):
        doc = AuditRowOut.model_validate(row).model_dump(mode="json")
        doc["hash"] = row.hash
        out.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
        count += 1
    return count
