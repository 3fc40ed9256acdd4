"""The patient portal (with consent), threads, and the clinician inbox; thin like the API's routers: read
the form, run one unit of work as the signed-in user, render or redirect."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from lockbox import ratelimit
from lockbox.access.actor import Actor
from lockbox.consent import service as consent
from lockbox.consent.exceptions import NothingToWithdraw
from lockbox.consent.schemas import ConsentChange, ConsentOverview
from lockbox.errors import ConfirmRecipients, LockboxError, NotFound, Unauthenticated
from lockbox.fhir import service as fhir
from lockbox.gateway import service as gateway
from lockbox.http import state
from lockbox.messaging import schemas
from lockbox.messaging import service as messaging
from lockbox.routing import service as routing
from lockbox.routing.schemas import TransferRequest
from lockbox.web import views
from lockbox.web.common import (
    base_context,
    form_text,
    page_id,
    page_router,
    read_form,
    read_upload,
    redirect,
    validation_message,
)
from lockbox.web.render import render
from lockbox.web.security import (
    CSRF_FIELD,
    CsrfRefused,
    as_user,
    as_user_posting,
    as_user_quietly,
    check_session_csrf,
)

router = page_router()


# -- patient portal --------------------------------------------------------------------------------


@router.get("/portal")
async def portal(request: Request) -> Response:
    actor, view = await as_user(request, views.portal)
    if view.consent == "none":  # the consent screen comes before first use
        return redirect("/consent")
    return render("portal.html", base_context(request, actor, page="portal", threads=view.threads, consent=view.consent,
                                              title="Messages", staff_view=False))


@router.get("/fragments/portal")
async def portal_fragment(request: Request) -> Response:
    actor, view = await as_user_quietly(request, views.portal)
    return render("_thread_list.html", base_context(request, actor, threads=view.threads, staff_view=False))


# The terms a patient agrees to on the consent screen; the version is what the consent record keeps.
TERMS_VERSION = "2026-01"
SCOPE_LABELS = {"messaging": "Secure messaging", "email": "Email notifications", "sms": "Text message notifications"}


def _consent_page(request: Request, actor: Actor, overview: ConsentOverview, *, status: int = 200,
                  **extra: Any) -> Response:
    states = {s.scope: s for s in overview.current}
    return render("consent.html", base_context(request, actor, page="consent", title="Consent", states=states,
                                               labels=SCOPE_LABELS, terms_version=TERMS_VERSION,
                                               history=overview.history[:10], **extra), status=status)


@router.get("/consent")
async def consent_page(request: Request) -> Response:
    actor, overview = await as_user(request, consent.my_consent)
    return _consent_page(request, actor, overview)


@router.post("/consent")
async def consent_change(request: Request) -> Response:
    form = await read_form(request)
    scope, choice = form_text(form, "scope", 20), form_text(form, "choice", 20)
    actor, overview = await as_user(request, consent.my_consent)
    current = next((s for s in overview.current if s.scope == scope), None)
    if current is None or choice not in ("grant", "opt_out"):
        raise NotFound()
    # Opting out of what is in force is a withdrawal; saying no before ever agreeing is a decline.
    status = "granted" if choice == "grant" else "withdrawn" if current.status == "granted" else "declined"
    data = ConsentChange(scope=current.scope, status=status, terms_version=TERMS_VERSION)
    try:
        await as_user_posting(request, form_text(form, CSRF_FIELD, 200), consent.change_my_consent, data=data)
    except NothingToWithdraw as exc:
        return _consent_page(request, actor, overview, status=exc.status, error=exc.detail)
    return redirect("/portal" if scope == "messaging" and status == "granted" else "/consent")


def _patient_form(request: Request, actor: Actor, *, status: int = 200, **extra: Any) -> Response:
    ctx = base_context(request, actor, page="portal-new", title="New message", subject="", body="",
                       max_mb=state(request).settings.max_attachment_bytes // (1024 * 1024))
    ctx.update(extra)
    return render("portal_new.html", ctx, status=status)


@router.get("/portal/new")
async def portal_new(request: Request) -> Response:
    actor, view = await as_user(request, views.portal)  # patients only
    if view.consent == "none":
        return redirect("/consent")
    return _patient_form(request, actor)


@router.post("/portal/new", dependencies=[ratelimit.SEND])
async def portal_send(request: Request) -> Response:
    form = await read_form(request, files=1)
    actor, view = await as_user(request, views.portal)
    if view.consent == "none":
        return redirect("/consent")
    subject, body = form_text(form, "subject", 400), form_text(form, "body")
    try:
        data = schemas.ThreadCreate(subject=subject, body=body)
        upload = await read_upload(request, form)
        _, created = await as_user_posting(request, form_text(form, CSRF_FIELD, 200), views.start_thread, data=data,
                                           upload=upload)
    except ValidationError as exc:
        return _patient_form(request, actor, status=400, subject=subject, body=body, error=validation_message(exc))
    except (Unauthenticated, CsrfRefused):
        raise
    except LockboxError as exc:
        return _patient_form(request, actor, status=exc.status, subject=subject, body=body, error=exc.detail)
    return redirect(f"/t/{created.id}")


# -- threads (patients and staff) ------------------------------------------------------------------


def _thread_page(request: Request, actor: Actor, page: views.ThreadPage, *, status: int = 200,
                 **extra: Any) -> Response:
    ctx = base_context(request, actor, page="thread", tp=page, title=page.detail.subject, reply_body="",
                       max_mb=state(request).settings.max_attachment_bytes // (1024 * 1024))
    ctx.update(extra)
    return render("thread.html", ctx, status=status)


@router.get("/t/{thread_id}")
async def thread(request: Request, thread_id: str) -> Response:
    actor, page = await as_user(request, views.open_thread, write=True, thread_id=page_id(thread_id))
    return _thread_page(request, actor, page)


@router.get("/fragments/t/{thread_id}")
async def thread_fragment(request: Request, thread_id: str, read: int = 0) -> Response:
    actor, page = await as_user_quietly(request, views.open_thread, write=True, thread_id=page_id(thread_id),
                                        mark_read=bool(read))
    return render("_thread_body.html", base_context(request, actor, tp=page))


@router.post("/t/{thread_id}/reply", dependencies=[ratelimit.SEND])
async def reply(request: Request, thread_id: str) -> Response:
    tid = page_id(thread_id)
    form = await read_form(request, files=1)
    body = form_text(form, "body")
    try:
        text = schemas.MessageCreate(body=body).body
        upload = await read_upload(request, form)
        await as_user_posting(request, form_text(form, CSRF_FIELD, 200), views.post_reply, thread_id=tid, body=text,
                              upload=upload)
    except (Unauthenticated, CsrfRefused, NotFound):
        raise
    except (ValidationError, LockboxError) as exc:
        error = validation_message(exc) if isinstance(exc, ValidationError) else exc.detail
        status = 400 if isinstance(exc, ValidationError) else exc.status
        actor, page = await as_user(request, views.open_thread, write=True, thread_id=tid, mark_read=False)
        return _thread_page(request, actor, page, status=status, reply_body=body, reply_error=error)
    return redirect(f"/t/{tid}#latest")


@router.post("/t/{thread_id}/urgent")
async def set_urgent(request: Request, thread_id: str) -> Response:
    tid = page_id(thread_id)
    form = await read_form(request)
    await as_user_posting(request, form_text(form, CSRF_FIELD, 200), messaging.set_urgent, thread_id=tid,
                          urgent=form_text(form, "urgent", 5) == "1")
    return redirect(f"/t/{tid}")


@router.post("/t/{thread_id}/close")
async def close(request: Request, thread_id: str) -> Response:
    tid = page_id(thread_id)
    form = await read_form(request)
    await as_user_posting(request, form_text(form, CSRF_FIELD, 200), messaging.close_thread, thread_id=tid)
    return redirect(f"/t/{tid}")


# -- routing: claim, release, transfer, call-back ------------------------------------------------


async def _routing_action(request: Request, tid: str, form: FormData, fn: Callable[..., object], *,
                          error_slot: str = "routing_error", **kwargs: Any) -> Response:
    """Run a routing (or filing) service call for the thread; a refusal is shown on the thread page, in the
    card named by ``error_slot``, as a reply's is."""
    try:
        await as_user_posting(request, form_text(form, CSRF_FIELD, 200), fn, thread_id=tid, **kwargs)
    except (Unauthenticated, CsrfRefused):
        raise
    except LockboxError as exc:
        # The plain "not found" is an outsider's answer (the 404 page); a named one ("no open call-back")
        # is news about a thread the caller can see.
        if isinstance(exc, NotFound) and exc.detail == NotFound.detail:
            raise
        return await _thread_error(request, tid, exc.status, exc.detail, slot=error_slot)
    # A claim from the queue stays on the queue; only a fixed value is honoured, never a URL.
    return redirect("/inbox" if form_text(form, "next", 10) == "inbox" else f"/t/{tid}")


async def _thread_error(request: Request, tid: str, status: int, error: str, *,
                        slot: str = "routing_error") -> Response:
    actor, page = await as_user(request, views.open_thread, write=True, thread_id=tid, mark_read=False)
    return _thread_page(request, actor, page, status=status, **{slot: error})


@router.post("/t/{thread_id}/claim")
async def claim(request: Request, thread_id: str) -> Response:
    tid = page_id(thread_id)
    return await _routing_action(request, tid, await read_form(request), routing.claim)


@router.post("/t/{thread_id}/release")
async def release(request: Request, thread_id: str) -> Response:
    tid = page_id(thread_id)
    return await _routing_action(request, tid, await read_form(request), routing.release)


@router.post("/t/{thread_id}/transfer")
async def transfer(request: Request, thread_id: str) -> Response:
    tid = page_id(thread_id)
    form = await read_form(request)
    try:
        data = TransferRequest(to=form_text(form, "to", 200).strip())
    except ValidationError:
        return await _thread_error(request, tid, 400, "Name the colleague by their username to transfer to.")
    return await _routing_action(request, tid, form, routing.transfer, to=data.to)


@router.post("/t/{thread_id}/callback/complete")
async def callback_done(request: Request, thread_id: str) -> Response:
    tid = page_id(thread_id)
    return await _routing_action(request, tid, await read_form(request), routing.complete_callback)


# -- the chart: a clinician files the thread into the EHR (lockbox.fhir, docs/fhir.md) ----------------


@router.post("/t/{thread_id}/file")
async def file_to_chart(request: Request, thread_id: str) -> Response:
    # The same service as POST /api/v1/threads/{id}/file: the same access (404 for a thread one may not see).
    tid = page_id(thread_id)
    return await _routing_action(request, tid, await read_form(request), fhir.request_filing,
                                 error_slot="filing_error")


# -- the [secure] gateway: a new link for an external recipient (docs/gateway.md) ---------------------


@router.post("/t/{thread_id}/external/{delivery_id}/resend")
async def resend_link(request: Request, thread_id: str, delivery_id: str) -> Response:
    # The same service as POST /api/v1/threads/{id}/external/{delivery_id}/resend, with its access checks.
    tid = page_id(thread_id)
    return await _routing_action(request, tid, await read_form(request), gateway.resend_link,
                                 error_slot="external_error", delivery_id=page_id(delivery_id))


# -- clinician inbox -------------------------------------------------------------------------------


@router.get("/inbox")
async def inbox(request: Request) -> Response:
    actor, box = await as_user(request, views.inbox)
    return render("inbox.html", base_context(request, actor, page="inbox", box=box, title="Inbox"))


@router.get("/fragments/inbox")
async def inbox_fragment(request: Request) -> Response:
    actor, box = await as_user_quietly(request, views.inbox)
    return render("_inbox.html", base_context(request, actor, box=box))


def _compose_page(request: Request, actor: Actor, hints: views.Hints, *, status: int = 200,
                  **extra: Any) -> Response:
    ctx = base_context(request, actor, page="compose", title="New thread", hints=hints, to="", patient="", subject="",
                       body="", urgent=False)
    ctx.update(extra)
    return render("compose.html", ctx, status=status)


@router.get("/compose")
async def compose(request: Request, patient: str | None = None, to: str | None = None) -> Response:
    actor, hints = await as_user(request, views.compose_hints)
    return _compose_page(request, actor, hints, patient=(patient or "")[:64], to=(to or "")[:300])


@router.post("/compose", dependencies=[ratelimit.SEND])
async def compose_send(request: Request) -> Response:
    form = await read_form(request)
    actor, hints = await as_user(request, views.compose_hints)
    to, patient = form_text(form, "to", 1000), form_text(form, "patient", 100).strip()
    subject, body = form_text(form, "subject", 400), form_text(form, "body")
    urgent = form_text(form, "urgent", 5) == "1"
    fields: dict[str, Any] = {"to": to, "patient": patient, "subject": subject, "body": body, "urgent": urgent}
    if form_text(form, "edit", 5) == "1":  # "change the recipients" on the confirmation page
        check_session_csrf(state(request).db.runtime.keyring, actor.session_id, form_text(form, CSRF_FIELD, 200))
        return _compose_page(request, actor, hints, **fields)
    try:
        data = schemas.ThreadCreate(subject=subject, body=body, to=[n for n in re.split(r"[\s,;]+", to) if n],
                                    patient=patient or None, urgent=urgent,
                                    confirm_recipients=form_text(form, "confirm_recipients", 5) == "1")
        _, created = await as_user_posting(request, form_text(form, CSRF_FIELD, 200), views.start_thread, data=data)
    except ValidationError as exc:
        return _compose_page(request, actor, hints, status=400, error=validation_message(exc), **fields)
    except ConfirmRecipients as exc:
        return render("confirm.html", base_context(request, actor, page="confirm", title="Confirm recipients",
                                                   cards=exc.extra.get("recipients", []), **fields), status=409)
    except (Unauthenticated, CsrfRefused):
        raise
    except LockboxError as exc:
        detail = exc.detail
        unknown = exc.extra.get("recipients")
        if unknown:
            detail += " Not found: " + ", ".join(str(n) for n in unknown) + "."
        return _compose_page(request, actor, hints, status=exc.status, error=detail, **fields)
    return redirect(f"/t/{created.id}")
