"""Server-side sessions: opaque bearer tokens stored as SHA-256, idle timeout and absolute lifetime.

A session is checked on every request against the database, so logout, revocation or deactivation
in any process takes effect on the next request everywhere.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.db.prepared import Prepared
from lockbox.db.uow import Credentials, end_sessions, runtime_of
from lockbox.errors import Unauthenticated
from lockbox.identity.models import AuthSession, User
from lockbox.identity.roles import Role

# Activity is written back at most this often; the idle clock is that much coarser, never longer.
TOUCH_GRANULARITY_S = 15


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def create_session(session: Session, *, user: User, device: str, client_addr: str) -> tuple[str, AuthSession]:
    """A new session with a new token: never reuse one across logins (session fixation)."""
    rt = runtime_of(session)
    now = rt.clock.now()
    token = new_token()
    auth = AuthSession(
        user_id=user.id,
        token_hash=hash_token(token),
        device=device[:200],
        client_addr=client_addr[:64],
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=rt.settings.session_lifetime_s),
        idle_timeout_s=rt.settings.idle_timeout_s,
    )
    session.add(auth)
    session.flush()
    return token, auth


def idle_deadline(auth: AuthSession) -> datetime:
    return min(auth.last_seen_at + timedelta(seconds=auth.idle_timeout_s), auth.expires_at)


_auth = cast(Table, AuthSession.__table__)
_users = cast(Table, User.__table__)
# Aliased, so a statement that also reads users for another purpose (the thread's patient, in the send
# path's access check) cannot correlate its subqueries to the caller by mistake.
_session_row = _auth.alias("caller_session")
_session_user = _users.alias("caller")
# The caller's session and account: what ``accept`` needs, and the table ``policy`` correlates on.
SESSION_COLUMNS = (
    _session_row.c.id.label("session_id"), _session_row.c.ended_at, _session_row.c.last_seen_at,
    _session_row.c.expires_at, _session_row.c.idle_timeout_s, _session_user.c.id.label("user_id"),
    _session_user.c.username, _session_user.c.role, _session_user.c.display_name, _session_user.c.active,
)
SESSION_FROM = _session_row.join(_session_user, _session_user.c.id == _session_row.c.user_id)
SESSION_USER = _session_user
SESSION_MATCH = _session_row.c.token_hash == bindparam("token_hash")
# Built once and run prepared: this runs on every request.
_RESOLVE = Prepared(select(*SESSION_COLUMNS).select_from(SESSION_FROM).where(SESSION_MATCH))
_TOUCH = Prepared(
    update(_auth)
    .where(_auth.c.id == bindparam("sid"), _auth.c.ended_at.is_(None), _auth.c.last_seen_at < bindparam("now"))
    .values(last_seen_at=bindparam("now"))
)


def resolve_session(session: Session, *, token: str, client_addr: str | None = None) -> tuple[Actor, bool]:
    """The actor behind ``token`` and whether its activity should be written back (see touch_session).

    Any unknown, ended, idle or expired session is the same Unauthenticated, whatever the cause.
    """
    return _actor(_RESOLVE.first(session, token_hash=hash_token(token)), runtime_of(session).clock.now(), client_addr)


def _actor(row: Any, now: datetime, client_addr: str | None) -> tuple[Actor, bool]:
    if row is None or row.session_id is None:
        raise Unauthenticated()
    deadline = min(row.last_seen_at + timedelta(seconds=row.idle_timeout_s), row.expires_at)
    if row.ended_at is not None or not row.active or now >= deadline:
        raise Unauthenticated("Your session has ended. Sign in again.")
    actor = Actor(
        user_id=row.user_id,
        username=row.username,
        role=Role(row.role),
        display_name=row.display_name,
        session_id=row.session_id,
        client_addr=client_addr,
    )
    stale = (now - row.last_seen_at).total_seconds() >= min(TOUCH_GRANULARITY_S, row.idle_timeout_s / 10)
    return actor, stale


def actor_for(session: Session, credentials: Credentials) -> Actor:
    """Resolve the caller inside a write unit: authentication, activity and the change share one commit."""
    return accept(session, _RESOLVE.first(session, token_hash=hash_token(credentials.token)), credentials)


def accept(session: Session, row: Any, credentials: Credentials) -> Actor:
    """``actor_for`` on a row of ``SESSION_COLUMNS`` that another statement fetched with ``token_hash``
    bound to ``hash_token(credentials.token)`` (a caller that resolves its session with its own first
    read: one round trip for both). A row whose session columns are NULL is an unknown session."""
    actor, stale = _actor(row, runtime_of(session).clock.now(), credentials.client_addr)
    if stale and actor.session_id:
        touch_session(session, session_id=actor.session_id)
    return actor


def touch_session(session: Session, *, session_id: str) -> None:
    _TOUCH.run(session, sid=session_id, now=runtime_of(session).clock.now())


def end_user_sessions(
    session: Session, *, user_id: str, reason: str, wipe: bool = False, except_session: str | None = None
) -> list[str]:
    """End every open session of a user; open sockets are closed (and told to wipe) after commit."""
    now = runtime_of(session).clock.now()
    query = select(AuthSession.id).where(AuthSession.user_id == user_id, AuthSession.ended_at.is_(None))
    if except_session:
        query = query.where(AuthSession.id != except_session)
    ids = list(session.scalars(query))
    if ids:
        session.execute(
            update(AuthSession).where(AuthSession.id.in_(ids)).values(ended_at=now, end_reason=reason)
        )
        end_sessions(session, ids, wipe=wipe)
    return ids


def end_session(session: Session, *, session_id: str, reason: str, wipe: bool = False) -> bool:
    now = runtime_of(session).clock.now()
    result = session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
    )
    if result.rowcount:  # type: ignore[attr-defined]
        end_sessions(session, [session_id], wipe=wipe)
        return True
    return False


def open_sessions(session: Session, *, user_id: str) -> list[AuthSession]:
    """The user's sessions that would still be accepted now (ended, idle or expired ones are left out)."""
    now = runtime_of(session).clock.now()
    rows = session.scalars(
        select(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.ended_at.is_(None), AuthSession.expires_at > now)
        .order_by(AuthSession.last_seen_at.desc())
    )
    return [auth for auth in rows if now < idle_deadline(auth)]
