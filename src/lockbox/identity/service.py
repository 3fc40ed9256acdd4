"""Enrolment, sign-in, password changes and sessions: each action with its audit row and throttle count.

A refused credential must leave its trace (audit row, throttle count) committed, so those services
return ``Refused`` instead of raising, and the router raises its error after the commit. Login keeps
argon2 (~70 ms, 64 MiB) out of the single writer thread: it is the hot, unauthenticated path, and a
burst of guesses there would stall every message send. Enrolment and password changes, rare and
behind a valid code or session, hash inside their unit of work.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import anyio
import anyio.to_thread
import pyotp
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.audit import service as audit
from lockbox.db.uow import runtime_of
from lockbox.errors import InvalidCredentials, LockboxError, NotFound, Throttled
from lockbox.identity import credentials, sessions, throttle
from lockbox.identity.enrolment import hash_code, issue_enrolment_code
from lockbox.identity.exceptions import InvalidEnrolment, WeakPassword
from lockbox.identity.models import AuthSession, User
from lockbox.identity.roles import Role

if TYPE_CHECKING:
    from lockbox.db import Database

# Each argon2 verification holds 64 MiB: a handful at a time, rather than one per thread-pool worker
# (40 by default, 2.5 GiB) when a credential-stuffing burst arrives.
_HASH_CONCURRENCY = 4
_hash_limiters: WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = WeakKeyDictionary()
_AUDIT_ADDR = re.compile(r"[0-9A-Za-z.:_-]{1,64}")


@dataclass(frozen=True)
class Refused:
    """A refusal to report once its trace is committed: ``raise result.error`` after the write."""

    error: LockboxError


@dataclass(frozen=True)
class SignedIn:
    token: str
    session_id: str
    expires_at: datetime
    idle_timeout_s: int


@dataclass(frozen=True)
class Enrolled:
    totp_uri: str


@dataclass(frozen=True)
class SessionView:
    id: str
    device: str
    created_at: datetime
    last_seen_at: datetime
    current: bool


@dataclass(frozen=True)
class _Account:
    """Whom a credential attempt claims to be: a user, or a name nobody has (throttled all the same)."""

    user_id: str | None
    throttle_key: str
    subject_type: str
    subject_id: str


@dataclass(frozen=True)
class _LoginAttempt:
    """What the read before a login found; the write checks it all again under the writer's lock."""

    account: _Account
    address_key: str
    password_hash: str | None
    lock: throttle.Lock | None


# -- enrolment -------------------------------------------------------------------------------------


def enrol(session: Session, *, username: str, enrolment_code: str, password: str,
          client_addr: str) -> Enrolled | Refused:
    """Set the password and a new TOTP secret with a one-time code; the secret is shown this once.

    Every wrong, used or expired code and every unknown name is the same refusal, counted by the
    throttle like a failed sign-in. The code is checked before the password's strength, so the
    strength feedback (which knows the account's names) cannot reveal who exists.
    """
    rt = runtime_of(session)
    now = rt.clock.now()
    user = _user_named(session, username)
    account = _account(session, user, username)
    address_key = throttle.address_key(client_addr)
    lock = throttle.lock_of(session, [(account.throttle_key, throttle.ACCOUNT),
                                      (address_key, throttle.ADDRESS)], now)
    if lock is not None:
        return _throttled(lock)
    reason = _enrolment_refusal(user, enrolment_code, now)
    if reason is not None or user is None:
        return _refuse(session, action="identity.enrolment.failure", account=account, address_key=address_key,
                       client_addr=client_addr, reason=reason or "unknown_user", error=InvalidEnrolment())
    weak = credentials.weak_password_reasons(password, user_inputs=[user.username, user.display_name])
    if weak:
        raise WeakPassword(weak)
    secret = credentials.new_totp_secret()
    user.password_hash = credentials.hash_password(password)
    user.totp_secret_sealed = credentials.seal_totp_secret(rt.keyring, user.id, secret)
    user.totp_last_step = 0
    user.enrolment_code_hash = None
    user.enrolment_expires_at = None
    user.enrolled_at = now
    throttle.reset(session, account.throttle_key, address_key)
    audit.record(session, action="identity.enrolment.complete", actor_id=user.id, subject_type="user",
                 subject_id=user.id, client_addr=_audit_addr(client_addr))
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=rt.settings.clinic_name)
    return Enrolled(totp_uri=uri)


def _enrolment_refusal(user: User | None, code: str, now: datetime) -> str | None:
    if user is None:
        return "unknown_user"
    if not user.active:
        return "inactive"
    if user.enrolment_code_hash is None or user.enrolment_expires_at is None:
        return "no_code"
    if not hmac.compare_digest(user.enrolment_code_hash, hash_code(code)):
        return "wrong_code"
    if now >= user.enrolment_expires_at:
        return "expired_code"
    return None


# -- sign-in ---------------------------------------------------------------------------------------


async def sign_in(db: Database, *, username: str, password: str, totp: str, device: str,
                  client_addr: str) -> SignedIn | Refused:
    """Password and TOTP to a new session: read, verify the password off the writer, then write.

    Unknown names are verified against a dummy hash, so they cost the same argon2 time as real ones.
    """
    attempt = await db.read(_prepare_login, username=username, client_addr=client_addr)
    if attempt.lock is not None:
        return _throttled(attempt.lock)  # no argon2 for a locked key
    ok = await anyio.to_thread.run_sync(credentials.verify_password, attempt.password_hash, password,
                                        limiter=_hash_limiter())
    return await db.write(_finish_login, attempt=attempt, verified_hash=attempt.password_hash if ok else None,
                          totp=totp, device=device, client_addr=client_addr)


def _prepare_login(session: Session, *, username: str, client_addr: str) -> _LoginAttempt:
    user = _user_named(session, username)
    account = _account(session, user, username)
    address_key = throttle.address_key(client_addr)
    lock = throttle.lock_of(session, [(account.throttle_key, throttle.ACCOUNT),
                                      (address_key, throttle.ADDRESS)], runtime_of(session).clock.now())
    return _LoginAttempt(account, address_key, user.password_hash if user else None, lock)


def _finish_login(session: Session, *, attempt: _LoginAttempt, verified_hash: str | None, totp: str, device: str,
          client_addr: str) -> SignedIn | Refused:
    """Finish a sign-in whose password check gave ``verified_hash`` (None: the password was wrong).

    The hash must still be the user's (no password change in between), the TOTP step must be newer
    than the last one accepted, and neither the account nor the address may be locked by now.
    """
    rt = runtime_of(session)
    now = rt.clock.now()
    lock = throttle.lock_of(session, [(attempt.account.throttle_key, throttle.ACCOUNT),
                                      (attempt.address_key, throttle.ADDRESS)], now)
    if lock is not None:
        return _throttled(lock)
    user = session.get(User, attempt.account.user_id) if attempt.account.user_id else None
    reason = _login_refusal(user, verified_hash)
    if reason is None and user is not None:
        reason = _check_totp(session, user, totp, now)
    if reason is not None or user is None:
        return _refuse(session, action="identity.login.failure", account=attempt.account,
                       address_key=attempt.address_key, client_addr=client_addr,
                       reason=reason or "unknown_user", error=InvalidCredentials())
    # "Consecutive" failures: a success clears both counters.
    throttle.reset(session, attempt.account.throttle_key, attempt.address_key)
    token, auth = sessions.create_session(session, user=user, device=device, client_addr=client_addr)
    audit.record(session, action="identity.login.success", actor=_actor(user, auth.id, client_addr),
                 subject_type="session", subject_id=auth.id, client_addr=_audit_addr(client_addr))
    return SignedIn(token=token, session_id=auth.id, expires_at=auth.expires_at, idle_timeout_s=auth.idle_timeout_s)


def _login_refusal(user: User | None, verified_hash: str | None) -> str | None:
    # The reason goes to the audit log for the security officer, never to the client.
    if user is None:
        return "unknown_user"
    if user.password_hash is None or user.totp_secret_sealed is None or user.enrolled_at is None:
        return "not_enrolled"
    if verified_hash is None or verified_hash != user.password_hash:
        return "bad_password"
    if not user.active:
        return "inactive"
    return None


def _check_totp(session: Session, user: User, code: str, now: datetime) -> str | None:
    """None when ``code`` is valid and unused; the step is consumed at once (RFC 6238 section 5.2)."""
    if user.totp_secret_sealed is None:
        return "not_enrolled"
    secret = credentials.open_totp_secret(runtime_of(session).keyring, user.id, user.totp_secret_sealed)
    step = credentials.totp_step(secret, code, at=now)
    if step is None:
        return "bad_totp"
    # A conditional update, so two processes racing with the same code cannot both win.
    consumed = session.execute(
        update(User).where(User.id == user.id, User.totp_last_step < step).values(totp_last_step=step)
    )
    return None if consumed.rowcount else "replayed_totp"  # type: ignore[attr-defined]


# -- the signed-in user ----------------------------------------------------------------------------


def logout(session: Session, *, actor: Actor) -> None:
    if actor.session_id is None:
        return
    sessions.end_session(session, session_id=actor.session_id, reason="logout")
    audit.record(session, action="identity.session.end", actor=actor, subject_type="session",
                 subject_id=actor.session_id, reason="logout")


def list_sessions(session: Session, *, actor: Actor) -> list[SessionView]:
    return [
        SessionView(id=auth.id, device=auth.device, created_at=auth.created_at, last_seen_at=auth.last_seen_at,
                    current=auth.id == actor.session_id)
        for auth in sessions.open_sessions(session, user_id=actor.user_id)
    ]


def revoke_session(session: Session, *, actor: Actor, session_id: str) -> None:
    """End one of the caller's own devices; anyone else's session id is NotFound."""
    auth = session.get(AuthSession, session_id)
    if auth is None or auth.user_id != actor.user_id or auth.ended_at is not None:
        raise NotFound()
    sessions.end_session(session, session_id=auth.id, reason="revoked")
    audit.record(session, action="identity.session.revoke", actor=actor, subject_type="session",
                 subject_id=auth.id)


def change_password(session: Session, *, actor: Actor, current_password: str, new_password: str,
                    totp: str) -> Refused | None:
    """Replace the password and end every session of the user, the caller's own included.

    Proving the current password and a fresh TOTP code keeps a borrowed, still-open session from
    taking the account over; wrong ones count against the account's throttle like a failed sign-in.
    """
    now = runtime_of(session).clock.now()
    user = session.get(User, actor.user_id)
    if user is None:
        raise NotFound()
    account = _account(session, user, user.username)
    lock = throttle.lock_of(session, [(account.throttle_key, throttle.ACCOUNT)], now)
    if lock is not None:
        return _throttled(lock)
    weak = credentials.weak_password_reasons(new_password, user_inputs=[user.username, user.display_name])
    if weak:
        raise WeakPassword(weak)
    reason = None
    if not credentials.verify_password(user.password_hash, current_password):
        reason = "bad_password"
    else:
        reason = _check_totp(session, user, totp, now)
    if reason is not None:
        return _refuse(session, action="identity.password.failure", account=account, address_key=None,
                       client_addr=actor.client_addr or "unknown", reason=reason, error=InvalidCredentials())
    user.password_hash = credentials.hash_password(new_password)
    throttle.reset(session, account.throttle_key)
    ended = sessions.end_user_sessions(session, user_id=user.id, reason="password_change")
    audit.record(session, action="identity.password.change", actor=actor, subject_type="user",
                 subject_id=user.id, sessions_ended=len(ended))
    return None


# -- administration --------------------------------------------------------------------------------


def wipe_user(session: Session, *, actor: Actor, user_id: str) -> None:
    """Remote wipe: end every session; open clients are told to erase their local data before closing."""
    user = _user_for_admin(session, actor, user_id)
    ended = sessions.end_user_sessions(session, user_id=user.id, reason="wipe", wipe=True)
    audit.record(session, action="identity.user.wipe", actor=actor, subject_type="user", subject_id=user.id,
                 sessions_ended=len(ended))


def deactivate_user(session: Session, *, actor: Actor, user_id: str) -> None:
    user = _user_for_admin(session, actor, user_id)
    user.active = False
    ended = sessions.end_user_sessions(session, user_id=user.id, reason="deactivated")
    audit.record(session, action="identity.user.deactivate", actor=actor, subject_type="user",
                 subject_id=user.id, sessions_ended=len(ended))


def reissue_enrolment_code(session: Session, *, actor: Actor, user_id: str) -> str:
    """Account recovery (lost phone, forgotten password, suspended sign-in): enrol again from scratch.

    The old password and TOTP secret stop working at once and every session ends.
    """
    user = _user_for_admin(session, actor, user_id)
    code = issue_enrolment_code(session, user=user)
    user.password_hash = None
    user.totp_secret_sealed = None
    user.enrolled_at = None
    throttle.reset(session, throttle.account_key(user.id))
    ended = sessions.end_user_sessions(session, user_id=user.id, reason="reenrolment")
    audit.record(session, action="identity.enrolment.issue", actor=actor, subject_type="user",
                 subject_id=user.id, sessions_ended=len(ended))
    return code


def _user_for_admin(session: Session, actor: Actor, user_id: str) -> User:
    if actor.role != Role.admin:
        raise NotFound()
    user = session.get(User, user_id)
    if user is None:
        raise NotFound()
    return user


# -- shared ----------------------------------------------------------------------------------------


def _user_named(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def _account(session: Session, user: User | None, username: str) -> _Account:
    if user is not None:
        return _Account(user.id, throttle.account_key(user.id), "user", user.id)
    # Keyed, not a bare hash: people type their password into the username field, and this lands in
    # the throttle table and the audit log. (A key rotation restarts these counters; addresses keep theirs.)
    _, digest = runtime_of(session).keyring.mac("unknown-username", username.lower().encode())
    name_id = digest.hex()[:32]
    return _Account(None, throttle.account_key(name_id), "unknown_account", name_id)


def _refuse(session: Session, *, action: str, account: _Account, address_key: str | None, client_addr: str,
            reason: str, error: LockboxError) -> Refused:
    """Count the failure, audit it and alert on a burst; the caller returns this so it all commits."""
    now = runtime_of(session).clock.now()
    addr = _audit_addr(client_addr)
    failure = throttle.record_failure(session, account.throttle_key, throttle.ACCOUNT, now)
    audit.record(session, action=action, subject_type=account.subject_type, subject_id=account.subject_id,
                 outcome="failure", reason=reason, client_addr=addr, failures=failure.failures)
    if failure.first_lock or failure.suspended:
        audit.raise_alert(session, kind="failed_login_burst", subject_type=account.subject_type,
                          subject_id=account.subject_id, scope="account", failures=failure.failures,
                          suspended=failure.suspended)
    if address_key is not None:
        by_addr = throttle.record_failure(session, address_key, throttle.ADDRESS, now)
        if by_addr.first_lock:
            audit.raise_alert(session, kind="failed_login_burst", subject_type="client_addr", subject_id=addr,
                              scope="address", failures=by_addr.failures)
    return Refused(error)


def _throttled(lock: throttle.Lock) -> Refused:
    if lock.suspended:
        return Refused(Throttled(lock.retry_after_s, "Too many failed sign-ins: ask your clinic for a new "
                                                     "enrolment code."))
    return Refused(Throttled(lock.retry_after_s))


def _actor(user: User, session_id: str, client_addr: str) -> Actor:
    return Actor(user_id=user.id, username=user.username, role=Role(user.role), display_name=user.display_name,
                 session_id=session_id, client_addr=client_addr)


def _audit_addr(client_addr: str) -> str:
    # Proxy headers can put anything here; the audit log takes identifiers only.
    return client_addr if _AUDIT_ADDR.fullmatch(client_addr) else "unparsable"


def _hash_limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _hash_limiters.get(loop)
    if limiter is None:
        limiter = _hash_limiters[loop] = anyio.CapacityLimiter(_HASH_CONCURRENCY)
    return limiter
