"""The external recipient's pages: open the link, get a one-time code by email, read, download, reply.

Built like the web app's pages (PageRoute: errors as pages, the strict CSP; pre-session CSRF on the code
forms, an HMAC of the access session on the reply). The link's token is opaque and random; the access
session lives in an HttpOnly, Secure, SameSite=Strict cookie scoped to that link's path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from jinja2 import ChoiceLoader, FileSystemLoader

from lockbox.errors import LockboxError, NotFound, Throttled
from lockbox.gateway import service
from lockbox.gateway.exceptions import NotVerified
from lockbox.http import state
from lockbox.messaging.service import INLINE_SAFE_TYPES
from lockbox.web.common import base_context, form_text, page_router, read_form, redirect
from lockbox.web.render import ENV, TEMPLATES_DIR
from lockbox.web.security import (
    CSRF_FIELD,
    PRESESSION_COOKIE,
    CsrfRefused,
    as_user,
    as_user_posting,
    check_presession_csrf,
    presession_csrf,
    presession_id,
    set_presession_cookie,
)

router = page_router()
ACCESS_COOKIE = "lockbox_secure_access"
_ENV = ENV.overlay(loader=ChoiceLoader([FileSystemLoader(Path(__file__).parent / "templates"),
                                        FileSystemLoader(TEMPLATES_DIR)]))


def _token(value: str) -> str:
    if not (30 <= len(value) <= 64 and value.isascii() and value.replace("-", "").replace("_", "").isalnum()):
        raise NotFound()
    return value


def _page(request: Request, template: str, *, status: int = 200, **extra: Any) -> Response:
    pre, new = presession_id(request)
    ctx = base_context(request, None, form_csrf=presession_csrf(state(request).db.runtime.keyring, pre),
                       **{"error": None, **extra})
    response = Response(_ENV.get_template(template).render(ctx), status_code=status, media_type="text/html")
    if new:
        set_presession_cookie(response, pre)
    return response


def _access(request: Request) -> str | None:
    value = request.cookies.get(ACCESS_COOKIE)
    return value if value and len(value) <= 100 else None


def _cookie_path(token: str) -> str:
    return f"/secure/{token}"


def _check_form(request: Request, form: Any) -> None:
    check_presession_csrf(state(request).db.runtime.keyring, request.cookies.get(PRESESSION_COOKIE),
                          form_text(form, CSRF_FIELD, 200))


@router.get("/secure/{token}")
async def open_link(token: str, request: Request) -> Response:
    token = _token(token)
    if _access(request):
        return redirect(f"/secure/{token}/message")
    link = await state(request).db.read(service.link_state, token=token)
    return _page(request, "secure_open.html", token=token, code_pending=link.code_pending,
                 expires_at=link.expires_at)


@router.get("/secure/{token}/code")
async def code_page(token: str, request: Request) -> Response:
    token = _token(token)
    await state(request).db.read(service.link_state, token=token)
    return _page(request, "secure_code.html", token=token, notice=None)


@router.post("/secure/{token}/code")
async def send_code(token: str, request: Request) -> Response:
    token = _token(token)
    form = await read_form(request)
    try:
        _check_form(request, form)
        await state(request).db.write(service.request_code, token=token)
    except CsrfRefused:
        link = await state(request).db.read(service.link_state, token=token)
        return _page(request, "secure_open.html", status=400, token=token, code_pending=link.code_pending,
                     expires_at=link.expires_at, error="The form had expired. Please try again.")
    except Throttled as exc:
        response = _page(request, "secure_code.html", status=429, token=token, notice=None, error=exc.detail)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    return _page(request, "secure_code.html", token=token,
                 notice="We sent a one-time code to your email address. It may take a minute to arrive.")


@router.post("/secure/{token}/verify")
async def verify(token: str, request: Request) -> Response:
    token = _token(token)
    form = await read_form(request)
    try:
        _check_form(request, form)
    except CsrfRefused:
        return _page(request, "secure_code.html", status=400, token=token, notice=None,
                     error="The form had expired. Please enter the code again.")
    result = await state(request).db.write(service.verify_code, token=token, code=form_text(form, "code", 32))
    if isinstance(result, service.Refused):
        err: LockboxError = result.error
        return _page(request, "secure_code.html", status=err.status, token=token, notice=None, error=err.detail)
    response = redirect(f"/secure/{token}/message")
    response.set_cookie(ACCESS_COOKIE, result, path=_cookie_path(token), httponly=True, secure=True,
                        samesite="strict")
    return response


def _back_to_start(token: str) -> Response:
    response = redirect(f"/secure/{token}")
    response.delete_cookie(ACCESS_COOKIE, path=_cookie_path(token), httponly=True, secure=True, samesite="strict")
    return response


@router.get("/secure/{token}/message")
async def message(token: str, request: Request, sent: int = 0) -> Response:
    token = _token(token)
    try:
        thread = await state(request).db.write(service.read_thread, token=token, access=_access(request))
    except NotVerified:
        return _back_to_start(token)
    return _page(request, "secure_message.html", token=token, t=thread, sent=bool(sent), title=thread.subject)


@router.post("/secure/{token}/reply")
async def reply(token: str, request: Request) -> Response:
    token = _token(token)
    form = await read_form(request)
    try:
        await state(request).db.write(service.reply, token=token, access=_access(request),
                                      csrf=form_text(form, CSRF_FIELD, 200), body=form_text(form, "body", 20_001))
    except NotVerified:
        return _back_to_start(token)
    return redirect(f"/secure/{token}/message?sent=1")


@router.get("/secure/{token}/files/{attachment_id}")
async def download(token: str, attachment_id: str, request: Request) -> Response:
    token = _token(token)
    if not (0 < len(attachment_id) <= 64 and attachment_id.isalnum()):
        raise NotFound()
    try:
        f = await state(request).db.write(service.download, token=token, access=_access(request),
                                          attachment_id=attachment_id)
    except NotVerified:
        return _back_to_start(token)
    kind = "inline" if f.content_type in INLINE_SAFE_TYPES else "attachment"
    return Response(f.data, media_type=f.content_type,
                    headers={"content-disposition": f"{kind}; filename*=UTF-8''{quote(f.filename)}"})


# -- staff: app passwords for their mail client ---------------------------------------------------------


def _mail_client_page(request: Request, actor: Any, passwords: list[Any], *, status: int = 200,
                      created: Any = None) -> Response:
    ctx = base_context(request, actor, title="Secure mail", passwords=passwords, created=created,
                       keyword=state(request).settings.smtp_gateway_keyword)
    return Response(_ENV.get_template("mail_client.html").render(ctx), status_code=status, media_type="text/html")


@router.get("/mail-client")
async def mail_client(request: Request) -> Response:
    actor, passwords = await as_user(request, service.list_passwords)
    return _mail_client_page(request, actor, passwords)


@router.post("/mail-client")
async def issue_password(request: Request) -> Response:
    form = await read_form(request)
    label = "".join(ch for ch in form_text(form, "label", 64) if ch.isprintable()).strip()
    actor, created = await as_user_posting(request, form_text(form, CSRF_FIELD, 200), service.issue_password,
                                           label=label)
    _, passwords = await as_user(request, service.list_passwords)
    return _mail_client_page(request, actor, passwords, created=created)


@router.post("/mail-client/{password_id}/revoke")
async def revoke_password(password_id: str, request: Request) -> Response:
    form = await read_form(request)
    if not (0 < len(password_id) <= 64 and password_id.isalnum()):
        raise NotFound()
    await as_user_posting(request, form_text(form, CSRF_FIELD, 200), service.revoke_password,
                          password_id=password_id)
    return redirect("/mail-client")
