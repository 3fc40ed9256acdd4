"""The browser side of a session: the cookie, CSRF tokens, the page CSP, and units of work run as the caller."""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request, Response
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.crypto.exceptions import KeyFileError
from lockbox.crypto.keys import Keyring
from lockbox.db.uow import Credentials, runtime_of
from lockbox.errors import LockboxError, Unauthenticated
from lockbox.http import SESSION_COOKIE, client_addr, state
from lockbox.identity import sessions

T = TypeVar("T")

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
PRESESSION_COOKIE = "lockbox_presession"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SESSION_PURPOSE = "csrf"
_PRESESSION_PURPOSE = "csrf-presession"


class CsrfRefused(LockboxError):
    code = "csrf"
    status = 403
    detail = "This form has expired or did not come from this site. Reload the page and try again."


# -- cookies ---------------------------------------------------------------------------------------


def session_token(request: Request) -> str:
    """The session cookie; pages never take a bearer header, so a page is always the browser's own session."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 200:
        raise Unauthenticated()
    return token


def set_session_cookie(response: Response, token: str) -> None:
    # The same cookie the API sets: no Max-Age (gone with the browser); the server enforces the lifetimes.
    response.set_cookie(SESSION_COOKIE, token, path="/", httponly=True, secure=True, samesite="strict")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=True, samesite="strict")


def presession_id(request: Request) -> tuple[str, bool]:
    """The random id that binds a sign-in or enrolment form to this browser, and whether it is new."""
    value = request.cookies.get(PRESESSION_COOKIE, "")
    if 20 <= len(value) <= 64 and value.isascii() and value.replace("-", "").replace("_", "").isalnum():
        return value, False
    return secrets.token_urlsafe(24), True


def set_presession_cookie(response: Response, value: str) -> None:
    response.set_cookie(PRESESSION_COOKIE, value, path="/", httponly=True, secure=True, samesite="strict")


def clear_presession_cookie(response: Response) -> None:
    response.delete_cookie(PRESESSION_COOKIE, path="/", httponly=True, secure=True, samesite="strict")


# -- CSRF ------------------------------------------------------------------------------------------
# A token is an HMAC of the session id under the keyring: no storage, and it dies with the session.
# Before sign-in the same is done for a random pre-session cookie, so the sign-in and enrolment forms
# cannot be posted from another site either (login CSRF).


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(keyring: Keyring, purpose: str, subject: str, version: int | None = None) -> str:
    version, digest = keyring.mac(purpose, subject.encode(), version=version)
    return f"{version}.{_b64(digest)}"


def _valid(keyring: Keyring, purpose: str, subject: str, token: str | None) -> bool:
    if not token or len(token) > 100:
        return False
    version, _, _ = token.partition(".")
    if not version.isdigit() or len(version) > 6:
        return False
    try:
        # The token's own key version, so a key rotation does not void the forms already open.
        expected = _token(keyring, purpose, subject, int(version))
    except KeyFileError:
        return False
    return hmac.compare_digest(expected.encode(), token.encode())


def session_csrf(keyring: Keyring, session_id: str) -> str:
    return _token(keyring, _SESSION_PURPOSE, session_id)


def presession_csrf(keyring: Keyring, presession_id: str) -> str:
    return _token(keyring, _PRESESSION_PURPOSE, presession_id)


def check_session_csrf(keyring: Keyring, session_id: str | None, token: str | None) -> None:
    """For a post that changes nothing (it only renders), so needs no unit of work of its own."""
    if not session_id or not _valid(keyring, _SESSION_PURPOSE, session_id, token):
        raise CsrfRefused()


def check_presession_csrf(keyring: Keyring, presession_id: str | None, token: str | None) -> None:
    if not presession_id or not _valid(keyring, _PRESESSION_PURPOSE, presession_id, token):
        raise CsrfRefused()


# -- units of work run as the browser's user ---------------------------------------------------------


def _as_actor(session: Session, *, actor: Actor, view: Callable[..., T], **kwargs: Any) -> tuple[Actor, T]:
    return actor, view(session, actor=actor, **kwargs)


def _as_actor_checked(session: Session, *, actor: Actor, csrf: str | None, view: Callable[..., T],
                      **kwargs: Any) -> tuple[Actor, T]:
    # Inside the unit: a refused token rolls back everything, the session's activity included.
    if actor.session_id is None or not _valid(runtime_of(session).keyring, _SESSION_PURPOSE, actor.session_id, csrf):
        raise CsrfRefused()
    return actor, view(session, actor=actor, **kwargs)


def _quietly(session: Session, *, token: str, client_addr: str, view: Callable[..., T],
             **kwargs: Any) -> tuple[Actor, T]:
    actor, _ = sessions.resolve_session(session, token=token, client_addr=client_addr)
    return actor, view(session, actor=actor, **kwargs)


async def as_user(request: Request, fn: Callable[..., T], *, write: bool = False, **kwargs: Any) -> tuple[Actor, T]:
    """Run ``fn(session, actor=…, **kwargs)`` as the signed-in user; the visit counts as activity."""
    db = state(request).db
    creds = Credentials(session_token(request), client_addr(request))
    run = db.write if write else db.read
    return await run(_as_actor, actor=creds, view=fn, **kwargs)


async def as_user_posting(request: Request, csrf: str | None, fn: Callable[..., T], **kwargs: Any) -> tuple[Actor, T]:
    """A form post: authenticated, CSRF-checked and applied in one unit of work."""
    db = state(request).db
    creds = Credentials(session_token(request), client_addr(request))
    return await db.write(_as_actor_checked, actor=creds, csrf=csrf, view=fn, **kwargs)


async def as_user_quietly(request: Request, fn: Callable[..., T], *, write: bool = False,
                          **kwargs: Any) -> tuple[Actor, T]:
    """For what the page fetches by itself (live updates, session checks): never extends the idle timeout,
    or an inbox left open in a busy clinic would never sign out."""
    db = state(request).db
    run = db.write if write else db.read
    return await run(_quietly, token=session_token(request), client_addr=client_addr(request), view=fn,
                     **kwargs)
