"""Sign-in, enrolment with the authenticator QR code, sign-out, and the session as the page's script sees it
(time left before the idle timeout, "stay signed in")."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import pyotp
import segno
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox import ratelimit
from lockbox.access.actor import Actor
from lockbox.db.uow import runtime_of
from lockbox.errors import Throttled, Unauthenticated
from lockbox.http import SESSION_COOKIE, client_addr, state
from lockbox.identity import service as identity
from lockbox.identity import sessions
from lockbox.identity.credentials import MAX_PASSWORD_LENGTH
from lockbox.identity.exceptions import WeakPassword
from lockbox.identity.models import AuthSession
from lockbox.web import views
from lockbox.web.common import (
    ENDED_NOTICES,
    base_context,
    device_label,
    form_text,
    home_for,
    page_router,
    read_form,
    redirect,
    safe_next,
)
from lockbox.web.render import render
from lockbox.web.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    PRESESSION_COOKIE,
    CsrfRefused,
    as_user,
    as_user_posting,
    as_user_quietly,
    check_presession_csrf,
    clear_presession_cookie,
    clear_session_cookie,
    presession_csrf,
    presession_id,
    set_presession_cookie,
    set_session_cookie,
)

router = page_router()


# -- sign-in and enrolment -----------------------------------------------------------------------


def _insecure_notice(request: Request) -> str | None:
    # The session cookie is always Secure: over plain HTTP (other than this machine, which browsers
    # treat as secure) it would silently not be kept, and sign-in would seem to do nothing.
    host = (request.url.hostname or "").lower()
    if (request.url.scheme == "https" or state(request).settings.public_url.startswith("https://")
            or host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")):
        return None
    return "This connection is not encrypted. Sign-in works only over HTTPS: ask your clinic for the secure address."


def _auth_page(request: Request, template: str, *, status: int = 200, **extra: Any) -> Response:
    pre, new = presession_id(request)
    ctx = base_context(request, None, page="auth", insecure=_insecure_notice(request),
                       form_csrf=presession_csrf(state(request).db.runtime.keyring, pre), **extra)
    response = render(template, ctx, status=status)
    if new:
        set_presession_cookie(response, pre)
    return response


@router.get("/")
async def root(request: Request) -> Response:
    actor, _ = await as_user(request, views.nothing)
    return redirect(home_for(actor))


@router.get("/login")
async def login_page(request: Request, ended: str | None = None, next: str | None = None) -> Response:
    if SESSION_COOKIE in request.cookies and not ended:
        with contextlib.suppress(Unauthenticated):  # already signed in: straight on
            actor, _ = await as_user_quietly(request, views.nothing)
            return redirect(safe_next(next) or home_for(actor))
    return _auth_page(request, "login.html", notice=ENDED_NOTICES.get(ended or ""), ended=ended or "",
                      next=safe_next(next) or "", username="")


@router.post("/login", dependencies=[ratelimit.LOGIN])
async def login(request: Request) -> Response:
    form = await read_form(request)
    username = form_text(form, "username", 200).strip()
    password = form_text(form, "password", MAX_PASSWORD_LENGTH + 1)
    totp = "".join(form_text(form, "totp", 32).split())
    nxt = safe_next(form_text(form, "next", 300)) or ""
    keyring = state(request).db.runtime.keyring
    try:
        check_presession_csrf(keyring, request.cookies.get(PRESESSION_COOKIE), form_text(form, CSRF_FIELD, 200))
    except CsrfRefused:
        return _auth_page(request, "login.html", status=400, username=username, next=nxt, notice=None, ended="",
                          error="The sign-in form had expired. Please enter your details again.")
    if not (0 < len(username) <= 64 and username.isprintable() and 0 < len(password) <= MAX_PASSWORD_LENGTH
            and 0 < len(totp) <= 16):
        return _auth_page(request, "login.html", status=401, username=username, next=nxt, notice=None, ended="",
                          error=identity.InvalidCredentials.detail)
    result = await identity.sign_in(state(request).db, username=username, password=password, totp=totp,
                                    device=device_label(request), client_addr=client_addr(request))
    if isinstance(result, identity.Refused):
        err = result.error
        if isinstance(err, Throttled):
            minutes = max(1, (err.retry_after_s + 59) // 60)
            message = f"{err.detail} You can try again in about {minutes} minute{'s' if minutes > 1 else ''}."
            response = _auth_page(request, "login.html", status=429, username=username, next=nxt, notice=None,
                                  ended="", error=message, locked=True)
            response.headers["Retry-After"] = str(err.retry_after_s)
            return response
        return _auth_page(request, "login.html", status=err.status, username=username, next=nxt, notice=None,
                          ended="", error=err.detail)
    response = redirect(nxt or "/")
    set_session_cookie(response, result.token)
    clear_presession_cookie(response)
    return response


@router.get("/enrol")
async def enrol_page(request: Request) -> Response:
    return _auth_page(request, "enrol.html", username="")


def _qr_svg(uri: str) -> Markup:
    # Inline SVG: no script and no style attribute, so the strict CSP holds; the light background keeps
    # the code scannable on a dark page.
    svg = segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff", border=4,
                                                 title="QR code for your authenticator app")
    return Markup(svg)  # noqa: S704 - segno's own output, from a URI we built


@router.post("/enrol")
async def enrol(request: Request) -> Response:
    form = await read_form(request)
    username = form_text(form, "username", 200).strip()
    code = form_text(form, "enrolment_code", 100).strip()
    password = form_text(form, "password", MAX_PASSWORD_LENGTH + 1)
    again = form_text(form, "password_again", MAX_PASSWORD_LENGTH + 1)
    keyring = state(request).db.runtime.keyring

    def again_page(status: int, error: str) -> Response:
        return _auth_page(request, "enrol.html", status=status, username=username, error=error)

    try:
        check_presession_csrf(keyring, request.cookies.get(PRESESSION_COOKIE), form_text(form, CSRF_FIELD, 200))
    except CsrfRefused:
        return again_page(400, "The enrolment form had expired. Please enter your details again.")
    if not (0 < len(username) <= 64 and username.isprintable() and 0 < len(code) <= 64):
        return again_page(401, identity.InvalidEnrolment.detail)
    if len(password) > MAX_PASSWORD_LENGTH:
        return again_page(400, f"Passwords are limited to {MAX_PASSWORD_LENGTH} characters.")
    if password != again:
        return again_page(400, "The two passwords are not the same.")
    try:
        result = await state(request).db.write(identity.enrol, username=username, enrolment_code=code,
                                               password=password, client_addr=client_addr(request))
    except WeakPassword as exc:
        return again_page(400, f"Choose a stronger password. {exc.detail}")
    if isinstance(result, identity.Refused):
        err = result.error
        status = 429 if isinstance(err, Throttled) else err.status
        return again_page(status, err.detail)
    totp = pyotp.parse_uri(result.totp_uri)
    secret = getattr(totp, "secret", "")
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    response = render("enrolled.html", base_context(request, None, page="auth", qr=_qr_svg(result.totp_uri),
                                                    secret=grouped, username=username))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await read_form(request)
    with contextlib.suppress(Unauthenticated):  # already over: signing out again is not an error
        await as_user_posting(request, form_text(form, CSRF_FIELD, 200), identity.logout)
    response = redirect("/login?ended=logout")
    clear_session_cookie(response)
    # Whatever the browser kept for this site (storage, cache) goes with the session.
    response.headers["Clear-Site-Data"] = '"cache", "storage"'
    return response


# -- the session, as the page's script sees it -----------------------------------------------------


def _session_state(session: Session, *, actor: Actor, touch: bool = False) -> dict[str, int]:
    auth = session.get(AuthSession, actor.session_id)
    if auth is None:
        raise Unauthenticated()
    now = runtime_of(session).clock.now()
    if touch:
        sessions.touch_session(session, session_id=auth.id)
        deadline = min(now + timedelta(seconds=auth.idle_timeout_s), auth.expires_at)
    else:
        deadline = sessions.idle_deadline(auth)
    return {"remaining_s": max(0, int((deadline - now).total_seconds())), "idle_timeout_s": auth.idle_timeout_s}


def _end_reason(session: Session, *, token: str) -> str:
    """Why a session the page still holds is over, so the sign-in page can say so (idle, wipe or ended)."""
    auth = session.scalar(select(AuthSession).where(AuthSession.token_hash == sessions.hash_token(token)))
    if auth is None:
        return "ended"
    if auth.ended_at is not None:
        return "wipe" if auth.end_reason == "wipe" else "ended"
    return "idle" if runtime_of(session).clock.now() >= sessions.idle_deadline(auth) else "ended"


@router.get("/session/status")
async def session_status(request: Request) -> Response:
    """Seconds left before the idle timeout; asking does not count as activity."""
    try:
        _, body = await as_user_quietly(request, _session_state)
    except Unauthenticated:
        token = request.cookies.get(SESSION_COOKIE) or ""
        reason = await state(request).db.read(_end_reason, token=token) if 0 < len(token) <= 200 else "ended"
        response = JSONResponse({"error": "unauthenticated", "detail": "Sign-in required.", "reason": reason},
                                status_code=401)
        clear_session_cookie(response)
        return response
    return JSONResponse(body)


@router.post("/session/keepalive")
async def keepalive(request: Request) -> Response:
    """The "stay signed in" button (and typing on the page): the person is here, so the idle clock restarts."""
    _, body = await as_user_posting(request, request.headers.get(CSRF_HEADER), _session_state, touch=True)
    return JSONResponse(body)
