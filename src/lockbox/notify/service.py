"""Notifications without PHI: queued in the unit of work that caused them, delivered by workers.

Who hears about a new message: a patient always, on each channel they have an address for and have not
opted out of (email, SMS); staff only when the thread is urgent or an emergency and they are a member or
its assignee, by email (otherwise their inbox, pool queues and routing's escalations and pages reach
them). Coalescing: one pending (queued or sending) notification per user, thread, channel and kind.

Exactly once: delivery marks the row ``sending``, sends with an idempotency key (SMTP Message-ID, webhook
``Idempotency-Key``) derived from the notification id, then marks it ``sent`` in its own unit before the
job is finished; a retried job never re-sends a row marked sent. The one window left: a worker that dies
between the provider accepting and the ``sent`` mark resends on retry, with the same key, so a provider
or mail client that deduplicates on it still shows one.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from lockbox.audit.service import record
from lockbox.consent import service as consent
from lockbox.db.prepared import Prepared
from lockbox.db.uow import runtime_of
from lockbox.errors import InvalidInput, NotFound
from lockbox.identity.models import User
from lockbox.identity.roles import Role
from lockbox.jobs import service as jobs
from lockbox.messaging.models import Participant, Thread
from lockbox.notify import schemas
from lockbox.notify.models import Notification, NotifyPreference
from lockbox.notify.providers import Outbound, channel_enabled, describe_failure, provider_for
from lockbox.notify.texts import render

if TYPE_CHECKING:
    from lockbox.access.actor import Actor
    from lockbox.db import Database

DELIVER = "notify.deliver"
PENDING = ("queued", "sending")
OPTED_OUT = "suppressed: opted out"


# -- queueing ------------------------------------------------------------------------------------


class Recipient(NamedTuple):
    """What queueing needs of an account (the columns of ``_RECIPIENT``)."""

    id: str
    role: str
    email: str | None
    phone: str | None
    active: bool


def message_sent(session: Session, *, thread_id: str, message_id: str, sender_id: str | None,
                 recipient_ids: list[str], thread: Any = None, patient: Recipient | None = None) -> None:
    """Called by messaging inside the unit that stores a message, for everyone it was pushed to except
    the sender: the notifications exist exactly when the message does. ``thread`` (the Thread, or a row
    with its patient_id, urgent and emergency) and ``patient`` (the thread's patient's account) spare
    reads when the caller has them."""
    if not recipient_ids:
        return
    if thread is None:
        thread = session.get(Thread, thread_id)
        if thread is None:
            return
    # The only patient a thread can reach is its own; staff hear by email only when it is urgent.
    # Most messages (a patient's routine reply to the team) therefore notify nobody: skip the queries.
    pressing = thread.urgent or thread.emergency
    recipients = set(recipient_ids)
    if thread.patient_id not in recipients and not pressing:
        return
    users: list[Any] = []
    if thread.patient_id in recipients:
        found = [patient] if patient is not None and patient.id == thread.patient_id else \
            _RECIPIENT.all(session, id=thread.patient_id)
        users = [u for u in found if u.active and (u.email or u.phone)]
    if pressing:
        # Staff are told by email, and only as a member or the assignee: read just those with an address.
        users += [u for u in _EMAILED_STAFF.all(session, thread_id=thread_id, assignee_id=thread.assignee_id)
                  if u.id in recipients]
    for user in users:
        if user.role == Role.patient:
            known = _known(session, user.id, thread_id)
            for channel, address in (("email", user.email), ("sms", user.phone)):
                if address:
                    queue(session, user=user, channel=channel, kind="new_message", thread_id=thread_id, known=known)
        else:
            queue(session, user=user, channel="email", kind="new_message", thread_id=thread_id,
                  known=_known(session, user.id, thread_id))


_users = cast(Table, User.__table__)
_participants = cast(Table, Participant.__table__)
_notifications = cast(Table, Notification.__table__)
# The send path's reads, prepared (see lockbox.db.prepared).
_RECIPIENT_COLUMNS = (_users.c.id, _users.c.role, _users.c.email, _users.c.phone, _users.c.active)
_RECIPIENT = Prepared(select(*_RECIPIENT_COLUMNS).where(_users.c.id == bindparam("id")))
# A pressing thread's staff who can be emailed: its members and its assignee with an address (prepared:
# an IN list of the recipients was compiled afresh for every message, a quarter of the writer's time).
_EMAILED_STAFF = Prepared(select(*_RECIPIENT_COLUMNS).where(
    _users.c.role != Role.patient.value, _users.c.active.is_(True), _users.c.email.is_not(None), _users.c.email != "",
    _users.c.id.in_(select(_participants.c.user_id).where(_participants.c.thread_id == bindparam("thread_id"),
                                                          _participants.c.kind == "member"))
    | (_users.c.id == bindparam("assignee_id"))))


def _newest_of(*columns: Any, channel: Any = None, kind: Any = None) -> Any:
    """The user's newest notification of a kind on a channel, in a thread (all bound unless given)."""
    n = _notifications.c
    return (select(*columns)
            .where(n.user_id == bindparam("user_id"), n.thread_id == bindparam("thread_id"),
                   n.channel == (bindparam("channel") if channel is None else channel),
                   n.kind == (bindparam("kind") if kind is None else kind))
            .order_by(n.created_at.desc(), n.id.desc()).limit(1))


_NEWEST = Prepared(_newest_of(_notifications.c.status, _notifications.c.reason, _notifications.c.sent_at,
                              _notifications.c.thread_id))
_last_read = select(_participants.c.last_read_at).where(
    _participants.c.thread_id == bindparam("thread_id"), _participants.c.user_id == bindparam("user_id"))
_LAST_READ = Prepared(_last_read)


class _Newest(NamedTuple):
    status: str
    reason: str | None
    sent_at: datetime | None
    thread_id: str | None


class _Known(NamedTuple):
    """What ``queue`` reads for a new_message to one user in one thread, read for all channels at once."""

    newest: dict[str, _Newest | None]  # channel -> its newest notification, None without one
    last_read_at: datetime | None
    consent: consent.NotificationConsent


_NEWEST_FIELDS = ("status", "reason", "sent_at")
_KNOWN_CHANNELS = ("email", "sms")
_KNOWN = Prepared(select(
    *(_newest_of(_notifications.c[f], channel=ch, kind="new_message").scalar_subquery().label(f"{ch}_{f}")
      for ch in _KNOWN_CHANNELS for f in _NEWEST_FIELDS),
    _last_read.scalar_subquery().label("last_read_at"),
    *consent.NOTIFICATION_CONSENT_COLUMNS))


def _known(session: Session, user_id: str, thread_id: str) -> _Known:
    """``queue``'s reads for every channel of a new message, in one statement: on PostgreSQL a patient's
    notification on two channels cost seven round trips. The same reads: rows this unit queues later are
    of another channel, and nothing else here changes them."""
    row = _KNOWN.first(session, user_id=user_id, thread_id=thread_id)
    newest = {ch: _Newest(getattr(row, f"{ch}_status"), getattr(row, f"{ch}_reason"), getattr(row, f"{ch}_sent_at"),
                          thread_id) if getattr(row, f"{ch}_status") is not None else None for ch in _KNOWN_CHANNELS}
    return _Known(newest, row.last_read_at, consent.notification_consent(row))


def queue(session: Session, *, user: User | Any, channel: str, kind: str, thread_id: str | None,
          known: _Known | None = None) -> Notification | None:
    """Queue one notification (or record why it is suppressed); None when coalesced into a pending one.
    ``user``: the User, or any row with its ``id``; ``known``: ``_known`` of this user and thread (a new_message)."""
    rt = runtime_of(session)
    now = rt.clock.now()
    if known is not None and kind == "new_message" and channel in known.newest:
        newest = known.newest[channel]
    else:
        known = None  # read for another kind or channel: queue reads for itself
        newest = _newest(session, user.id, thread_id, channel, kind) if thread_id else None
    if newest is not None and newest.status in PENDING:
        return None
    if newest is not None and kind == "new_message" and _told_since_last_read(session, user.id, newest, known):
        return None  # one "you have a new message" per thread until they have read it
    reason = None
    allowed = known.consent.allows(channel) if known is not None else \
        consent.allows_notification(session, user_id=user.id, channel=channel)
    if not allowed:
        reason = OPTED_OUT
    elif not channel_enabled(rt.settings, channel):
        reason = "suppressed: channel off"
    if reason is not None:
        if newest is not None and newest.status == "suppressed" and newest.reason == reason:
            return None  # recorded once per thread, not once per message
        n = Notification(user_id=user.id, channel=channel, kind=kind, status="suppressed", reason=reason,
                         thread_id=thread_id, created_at=now, send_after=now, attempts=0)
        session.add(n)
        session.flush()
        return n
    send_after = now if kind == "page" else (quiet_until(_preference(session, user.id), now) or now)
    n = Notification(user_id=user.id, channel=channel, kind=kind, status="queued", thread_id=thread_id,
                     created_at=now, send_after=send_after, attempts=0,
                     reason="deferred: quiet hours" if send_after > now else None)
    session.add(n)
    session.flush()
    # No dedupe key: the notification id is new, and the coalescing above already ran.
    jobs.enqueue(session, kind=DELIVER, payload={"notification_id": n.id}, run_at=send_after,
                 max_attempts=rt.settings.notify_max_attempts)
    return n


def _told_since_last_read(session: Session, user_id: str, newest: Any, known: _Known | None = None) -> bool:
    if newest.status != "sent" or newest.sent_at is None or newest.thread_id is None:
        return False
    if known is not None:
        last_read = known.last_read_at
    else:
        row = _LAST_READ.first(session, thread_id=newest.thread_id, user_id=user_id)
        last_read = row.last_read_at if row is not None else None
    return last_read is None or last_read < newest.sent_at


def _newest(session: Session, user_id: str, thread_id: str, channel: str, kind: str) -> Any:
    """The newest notification's status, reason, sent_at and thread_id, or None.

    Race-free without a lock: messages to one thread serialise on the thread row their unit updates.
    Read prepared, so rows this unit added through the ORM must be flushed first (``queue`` does)."""
    return _NEWEST.first(session, user_id=user_id, thread_id=thread_id, channel=channel, kind=kind)


def _preference(session: Session, user_id: str) -> NotifyPreference | None:
    return session.get(NotifyPreference, user_id)


def quiet_until(pref: NotifyPreference | None, now: datetime) -> datetime | None:
    """The end of the quiet period ``now`` falls in (UTC), or None outside quiet hours."""
    if pref is None or pref.quiet_from is None or pref.quiet_to is None:
        return None
    tz = ZoneInfo(pref.timezone)
    local = now.astimezone(tz)
    t, start, end = local.time().replace(tzinfo=None), pref.quiet_from, pref.quiet_to
    if start < end:
        inside, end_day = start <= t < end, local.date()
    else:  # across midnight
        inside = t >= start or t < end
        end_day = local.date() + timedelta(days=1) if t >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=tz).astimezone(UTC)


# -- pages and escalations from routing ------------------------------------------------------------


def _thread_or_none(session: Session, thread_id: Any) -> str | None:
    if isinstance(thread_id, str) and session.get(Thread, thread_id) is not None:
        return thread_id
    return None


def _active_user(session: Session, user_id: Any) -> User | None:
    user = session.get(User, user_id) if isinstance(user_id, str) else None
    return user if user is not None and user.active else None


def page(session: Session, payload: dict[str, Any]) -> None:
    """Job ``notify.page`` {user_id, thread_id, reason}: by pager, else SMS, else email; ignores quiet
    hours. The reason is not passed on: a page says only that it is one."""
    user = _active_user(session, payload.get("user_id"))
    if user is None:
        return
    settings = runtime_of(session).settings
    if user.phone and channel_enabled(settings, "pager"):
        channel = "pager"
    elif user.phone and channel_enabled(settings, "sms"):
        channel = "sms"
    elif user.email:
        channel = "email"
    else:
        return
    queue(session, user=user, channel=channel, kind="page",
          thread_id=_thread_or_none(session, payload.get("thread_id")))


def escalation(session: Session, payload: dict[str, Any]) -> None:
    """Job ``notify.escalation`` {user_id, thread_id, tier}: by SMS, else email; respects quiet hours."""
    user = _active_user(session, payload.get("user_id"))
    if user is None:
        return
    settings = runtime_of(session).settings
    channel = "sms" if user.phone and channel_enabled(settings, "sms") else "email" if user.email else None
    if channel is None:
        return
    queue(session, user=user, channel=channel, kind="escalation",
          thread_id=_thread_or_none(session, payload.get("thread_id")))


# -- delivery --------------------------------------------------------------------------------------


def deliver(payload: dict[str, Any], *, db: Database) -> None:
    """Job ``notify.deliver`` {notification_id}, run outside any transaction (see the module docstring)."""
    notification_id = str(payload.get("notification_id", ""))
    out = db.write_sync(_begin, notification_id=notification_id)
    if out is None:
        return
    try:
        provider_id = provider_for(db.runtime.settings, out.channel).send(out)
    except Exception as exc:
        db.write_sync(_attempt_failed, notification_id=notification_id, error=describe_failure(exc))
        raise
    db.write_sync(_mark_sent, notification_id=notification_id, provider_id=provider_id)


def _suppress(n: Notification, reason: str) -> None:
    n.status, n.reason = "suppressed", reason


def _begin(session: Session, *, notification_id: str) -> Outbound | None:
    n = session.get(Notification, notification_id)
    if n is None or n.status not in PENDING:
        return None  # sent, suppressed or dead already: never again
    # Consent is checked again: an opt-out between queueing and sending still wins.
    if not consent.allows_notification(session, user_id=n.user_id, channel=n.channel):
        _suppress(n, OPTED_OUT)
        return None
    rt = runtime_of(session)
    if not channel_enabled(rt.settings, n.channel):
        _suppress(n, "suppressed: channel off")
        return None
    user = session.get(User, n.user_id)
    address = None if user is None or not user.active else user.email if n.channel == "email" else user.phone
    if not address:
        _suppress(n, "suppressed: no address")
        return None
    now = rt.clock.now()
    n.status, n.sending_at, n.attempts = "sending", now, n.attempts + 1
    text = render(n.kind, rt.settings)
    return Outbound(notification_id=n.id, channel=n.channel, to=address, subject=text.subject,
                    text=text.body if n.channel == "email" else text.short, at=now)


def _attempt_failed(session: Session, *, notification_id: str, error: str) -> None:
    n = session.get(Notification, notification_id)
    if n is None or n.status != "sending":
        return
    n.reason = f"failed: {error}"[:100]
    if n.attempts >= runtime_of(session).settings.notify_max_attempts:
        n.status = "failed"  # the job dead-letters at the same count; admins see this row
        record(session, action="notify.notification.fail", subject_type="notification", subject_id=n.id,
               user_id=n.user_id, channel=n.channel, kind=n.kind, attempts=n.attempts)
    else:
        n.status = "queued"


def _mark_sent(session: Session, *, notification_id: str, provider_id: str | None) -> None:
    n = session.get(Notification, notification_id)
    if n is None or n.status == "sent":
        return
    n.status, n.reason = "sent", None
    n.sent_at = runtime_of(session).clock.now()
    n.provider_message_id = provider_id
    record(session, action="notify.notification.send", subject_type="notification", subject_id=n.id,
           user_id=n.user_id, channel=n.channel, kind=n.kind)


# -- the API's services ----------------------------------------------------------------------------


def _pref_out(pref: NotifyPreference | None) -> schemas.PreferencesOut:
    if pref is None:
        return schemas.PreferencesOut(quiet_from=None, quiet_to=None, timezone="UTC")
    return schemas.PreferencesOut(quiet_from=pref.quiet_from, quiet_to=pref.quiet_to, timezone=pref.timezone)


def my_preferences(session: Session, *, actor: Actor) -> schemas.PreferencesOut:
    return _pref_out(_preference(session, actor.user_id))


def set_my_preferences(session: Session, *, actor: Actor, data: schemas.PreferencesIn) -> schemas.PreferencesOut:
    """Quiet hours hold back new-message and escalation notifications until they end; pages still go."""
    if (data.quiet_from is None) != (data.quiet_to is None):
        raise InvalidInput("Give both quiet_from and quiet_to, or neither.")
    if data.quiet_from is not None and data.quiet_from == data.quiet_to:
        raise InvalidInput("quiet_from and quiet_to must differ.")
    try:
        ZoneInfo(data.timezone)
    except (ValueError, OSError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise InvalidInput("Unknown time zone; use an IANA name such as America/New_York.") from exc
    pref = _preference(session, actor.user_id)
    now = runtime_of(session).clock.now()
    if pref is None:
        pref = NotifyPreference(user_id=actor.user_id, updated_at=now)
        session.add(pref)
    pref.quiet_from, pref.quiet_to, pref.timezone, pref.updated_at = (
        _minute(data.quiet_from), _minute(data.quiet_to), data.timezone, now)
    session.flush()
    record(session, action="notify.preferences.change", actor=actor, subject_type="user",
           subject_id=actor.user_id, quiet_hours=data.quiet_from is not None)
    return _pref_out(pref)


def _minute(value: time | None) -> time | None:
    return value.replace(second=0, microsecond=0, tzinfo=None) if value is not None else None


def list_notifications(session: Session, *, actor: Actor, status: str | None,
                       limit: int) -> list[schemas.NotificationOut]:
    """Admins' view of the outbox, failed ones (dead letters) included; metadata only."""
    if actor.role != Role.admin:
        raise NotFound()
    q = (select(Notification, User.username).join(User, User.id == Notification.user_id)
         .order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit))
    if status is not None:
        q = q.where(Notification.status == status)
    return [schemas.NotificationOut(
        id=n.id, user_id=n.user_id, username=username, channel=n.channel, kind=n.kind, status=n.status,
        reason=n.reason, created_at=n.created_at, send_after=n.send_after, sent_at=n.sent_at,
        attempts=n.attempts, provider_message_id=n.provider_message_id) for n, username in session.execute(q)]
