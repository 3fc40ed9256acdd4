"""What every page route shares: errors rendered as pages with the page CSP, the template context, and
form reading."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from lockbox.access.actor import Actor
from lockbox.errors import LockboxError, NotFound, PayloadTooLarge, Throttled, Unauthenticated
from lockbox.http import SESSION_COOKIE, state
from lockbox.identity.roles import NO_CONTENT_ROLES
from lockbox.web import WebOptions, views
from lockbox.web.render import render
from lockbox.web.security import PAGE_CSP, clear_session_cookie, session_csrf

_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
# Paths that the page's own script fetches: they answer 401, never a redirect to the sign-in page.
_BACKGROUND = ("/fragments/", "/session/")
ENDED_NOTICES = {
    "logout": "You have signed out.",
    "idle": "You were signed out because the page was inactive. Sign in again to continue.",
    "ended": "Your session has ended. Sign in again to continue.",
    "wipe": "This device was signed out by your clinic and the page's data was cleared.",
}
EMERGENCY_TEXT = "Secure messaging is not for emergencies: call 911 or go to the nearest emergency department."
NOT_FOUND_TEXT = "This page does not exist, or it is not available to you."


class PageRoute(APIRoute):
    """Renders domain errors as pages and puts the page CSP on every answer."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except Unauthenticated:
                response = signed_out(request)
            except LockboxError as exc:
                response = error_page(request, exc.status, exc.detail)
                if isinstance(exc, Throttled):
                    response.headers["Retry-After"] = str(exc.retry_after_s)
            except RequestValidationError:
                response = error_page(request, 404, "Not found.")
            response.headers["content-security-policy"] = PAGE_CSP
            return response

        return route


def page_router() -> APIRouter:
    """A router for pages: kept out of the OpenAPI document (it describes the JSON API only)."""
    return APIRouter(route_class=PageRoute, include_in_schema=False)


# -- shared ----------------------------------------------------------------------------------------


def signed_out(request: Request) -> Response:
    response: Response
    if request.url.path.startswith(_BACKGROUND):
        response = JSONResponse({"error": "unauthenticated", "detail": "Sign-in required."}, status_code=401)
    else:
        had_session = SESSION_COOKIE in request.cookies
        target = "/login?ended=ended" if had_session else "/login"
        if request.method == "GET" and request.url.path not in ("/", "/login"):
            target += ("&" if "?" in target else "?") + "next=" + quote(request.url.path, safe="/")
        response = RedirectResponse(target, status_code=303)
    clear_session_cookie(response)
    return response


def error_page(request: Request, status: int, detail: str) -> Response:
    if request.url.path.startswith(_BACKGROUND):
        return JSONResponse({"error": "error", "detail": detail}, status_code=status)
    # The same words for "missing" and "not yours", as the API: existence does not leak.
    title, text = ("Not found", NOT_FOUND_TEXT) if status == 404 else ("This did not work", detail)
    return render("error.html", base_context(request, None, title=title, detail=text, status=status), status=status)


def web_options(request: Request) -> WebOptions:
    opts: WebOptions = getattr(request.app.state, "web_options", None) or WebOptions()
    return opts


def home_for(actor: Actor) -> str:
    if actor.is_patient:
        return "/portal"
    if actor.role in NO_CONTENT_ROLES:
        return "/compliance"
    return "/inbox"


def nav_for(actor: Actor | None, *, mail_gateway: bool = False) -> list[tuple[str, str]]:
    if actor is None:
        return []
    if actor.is_patient:
        return [("Messages", "/portal"), ("New message", "/portal/new"), ("Consent", "/consent")]
    if actor.role in NO_CONTENT_ROLES:
        return [("Compliance", "/compliance"), ("Analytics", "/analytics")]
    nav = [("Inbox", "/inbox"), ("New thread", "/compose"), ("Analytics", "/analytics")]
    # The staff who may send through the gateway (everyone here) get their app passwords' page; with the
    # gateway off (port 0) an app password would open nothing.
    if mail_gateway:
        nav.append(("Secure mail", "/mail-client"))
    return nav


def base_context(request: Request, actor: Actor | None, **extra: Any) -> dict[str, Any]:
    st = state(request)
    ctx: dict[str, Any] = {
        "clinic_name": st.settings.clinic_name,
        "actor": actor,
        "nav": nav_for(actor, mail_gateway=bool(st.settings.smtp_gateway_port)),
        "path": request.url.path,
        "now": st.db.runtime.clock.now(),
        "emergency_text": EMERGENCY_TEXT,
        "show_emergency": actor is None or actor.is_patient,
        "csrf": "",
        "page": "",
        "error": None,
    }
    if actor is not None and actor.session_id is not None:
        idle = st.settings.idle_timeout_s
        opts = web_options(request)
        ctx.update(csrf=session_csrf(st.db.runtime.keyring, actor.session_id), idle_timeout_s=idle,
                   warn_s=opts.warn_for(idle), poll_s=opts.poll_s)
    ctx.update(extra)
    return ctx


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def safe_next(value: str | None) -> str | None:
    """Only a path on this site: never an absolute or scheme-relative URL (open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 200:
        return None
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else None


def form_text(form: FormData, name: str, limit: int = 20_000) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def page_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise NotFound()
    return value


async def read_form(request: Request, *, files: int = 0) -> FormData:
    return await request.form(max_files=files, max_fields=20, max_part_size=256 * 1024)


async def read_upload(request: Request, form: FormData) -> views.Upload | None:
    """The optional file of a form, read up to the limit plus one byte so an oversized one is refused."""
    value = form.get("file")
    if not isinstance(value, UploadFile) or not value.filename:
        return None
    limit = state(request).settings.max_attachment_bytes
    data = await value.read(limit + 1)
    if not data:
        return None
    if len(data) > limit:
        raise PayloadTooLarge(f"Attachments are limited to {limit // (1024 * 1024)} MiB.")
    return views.Upload(value.filename, data)


def device_label(request: Request) -> str:
    return "".join(ch for ch in request.headers.get("user-agent", "")[:200] if ch.isprintable())


def validation_message(exc: ValidationError) -> str:
    labels = {"subject": "Subject", "body": "Message", "to": "To", "patient": "Patient"}
    parts = []
    for err in exc.errors()[:3]:
        field = str(err.get("loc", ("",))[0])
        msg = str(err.get("msg", "is not valid"))
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{labels.get(field, field.title())}: {msg}.")
    return " ".join(parts) or "Check the form and try again."
