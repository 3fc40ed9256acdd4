"""Server-side sessions: opaque bearer tokens stored as SHA-256, idle timeout and absolute lifetime.

A session is checked on every request against the database, so logout, revocation or deactivation
in any process takes effect on the next request everywhere.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import cast

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
# Built once and run prepared: this runs on every request.
_RESOLVE = Prepared(
    select(_auth.c.id, _auth.c.ended_at, _auth.c.last_seen_at, _auth.c.expires_at, _auth.c.idle_timeout_s,
           _users.c.id.label("user_id"), _users.c.username, _users.c.role, _users.c.display_name, _users.c.active)
    .select_from(_auth.join(_users, _users.c.id == _auth.c.user_id))
    .where(_auth.c.token_hash == bindparam("token_hash"))
)
_TOUCH = Prepared(
    update(_auth)
    .where(_auth.c.id == bindparam("sid"), _auth.c.ended_at.is_(None), _auth.c.last_seen_at < bindparam("now"))
    .values(last_seen_at=bindparam("now"))
)


def resolve_session(session: Session, *, token: str, client_addr: str | None = None) -> tuple[Actor, bool]:
    """The actor behind ``token`` and whether its activity should be written back (see touch_session).

    Any unknown, ended, idle or expired session is the same Unauthenticated, whatever the cause.
    """
    now = runtime_of(session).clock.now()
    row = _RESOLVE.first(session, token_hash=hash_token(token))
    if row is None:
        raise Unauthenticated()
    deadline = min(row.last_seen_at + timedelta(seconds=row.idle_timeout_s), row.expires_at)
    if row.ended_at is not None or not row.active or now >= deadline:
        raise Unauthenticated("Your session has ended. Sign in again.")
    actor = Actor(
        user_id=row.user_id,
        username=row.username,
        role=Role(row.role),
        display_name=row.display_name,
        session_id=row.id,
        client_addr=client_addr,
    )
    stale = (now - row.last_seen_at).total_seconds() >= min(TOUCH_GRANULARITY_S, row.idle_timeout_s / 10)
    return actor, stale


def actor_for(session: Session, credentials: Credentials) -> Actor:
    """Resolve the caller inside a write unit: authentication, activity and the change share one commit."""
    actor, stale = resolve_session(session, token=credentials.token, client_addr=credentials.client_addr)
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
