"""Messaging routes (ARCHITECTURE section 5): thin wrappers around messaging.service."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import BaseModel

from lockbox import ratelimit
from lockbox.errors import PayloadTooLarge
from lockbox.http import Caller, Db, credentials, json_body, json_body_openapi, state
from lockbox.messaging import schemas, service
from lockbox.routing import screening
from lockbox.routing.service import UNSCREENED

router = APIRouter(tags=["messaging"])


def _json(model: BaseModel, status: int = 200) -> Response:
    # The service built a validated model already; FastAPI would validate it a second time.
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


@router.post("/threads", status_code=201, response_model=schemas.ThreadCreated, dependencies=[ratelimit.SEND])
async def create_thread(data: schemas.ThreadCreate, actor: Caller, db: Db) -> Response:
    return _json(await db.write(service.create_thread, actor=actor, data=data), 201)


@router.get("/threads", response_model=list[schemas.ThreadSummary])
async def list_threads(actor: Caller, db: Db) -> list[schemas.ThreadSummary]:
    return await db.read(service.list_threads, actor=actor)


@router.get("/threads/{thread_id}", response_model=schemas.ThreadDetail)
async def get_thread(thread_id: str, actor: Caller, db: Db) -> schemas.ThreadDetail:
    return await db.write(service.get_thread, actor=actor, thread_id=thread_id)


@router.post("/threads/{thread_id}/messages", status_code=201, response_model=schemas.MessageOut,
             openapi_extra=json_body_openapi(schemas.MessageCreate))
async def reply(thread_id: str, request: Request) -> Response:
    # The hot path, so no dependencies and no body parameter: each costs a pass of FastAPI's resolver.
    # The same steps in the same order as ``dependencies=[ratelimit.SEND]``, ``Caller`` and a
    # ``MessageCreate`` body: count the send, then 401 without a session, then 422 on a bad body.
    await ratelimit.enforce(request, "send")
    actor = credentials(request)
    data = await json_body(request, schemas.MessageCreate)
    db = state(request).db
    pool = screening.pool_of(request.app)
    if pool is None:
        return _json(await db.write(service.reply, actor=actor, thread_id=thread_id, body=data.body), 201)
    # A patient's reply is checked for an emergency by a helper process, off this process's core, before
    # its unit of work; whether the sender is a patient is known from their previous reply.
    sender = pool.sender_key(actor.token)
    screened = await pool.screen(data.body) if pool.is_patient(sender) else UNSCREENED
    out = await db.write(service.reply, actor=actor, thread_id=thread_id, body=data.body, screened=screened)
    pool.learn(sender, out.sender.role == "patient")
    return _json(out, 201)


@router.post("/threads/{thread_id}/read", status_code=204)
async def mark_read(thread_id: str, actor: Caller, db: Db) -> Response:
    await db.write(service.mark_read, actor=actor, thread_id=thread_id)
    return Response(status_code=204)


@router.post("/threads/{thread_id}/urgent", status_code=204)
async def set_urgent(thread_id: str, data: schemas.UrgentFlag, actor: Caller, db: Db) -> Response:
    await db.write(service.set_urgent, actor=actor, thread_id=thread_id, urgent=data.urgent)
    return Response(status_code=204)


@router.post("/threads/{thread_id}/close", status_code=204)
async def close_thread(thread_id: str, actor: Caller, db: Db) -> Response:
    await db.write(service.close_thread, actor=actor, thread_id=thread_id)
    return Response(status_code=204)


@router.post("/threads/{thread_id}/break-glass", status_code=204)
async def break_glass(thread_id: str, data: schemas.BreakGlassRequest, actor: Caller, db: Db) -> Response:
    await db.write(service.break_glass, actor=actor, thread_id=thread_id, reason=data.reason)
    return Response(status_code=204)


@router.post("/threads/{thread_id}/attachments", status_code=201, response_model=schemas.MessageOut,
             dependencies=[ratelimit.UPLOAD])
async def upload_attachment(
    thread_id: str,
    actor: Caller,
    db: Db,
    file: UploadFile = File(...),
    body: str | None = Form(default=None, max_length=20_000),
) -> schemas.MessageOut:
    limit = db.runtime.settings.max_attachment_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"Attachments are limited to {limit // (1024 * 1024)} MiB.")
    return await db.write(service.add_attachment, actor=actor, thread_id=thread_id,
                          filename=file.filename or "attachment", data=data, body=body)


@router.get(
    "/threads/{thread_id}/attachments/{attachment_id}",
    response_class=Response,
    responses={200: {"content": {t: {} for t in sorted(service.ALLOWED_TYPES)}, "description": "The file"}},
)
async def download_attachment(thread_id: str, attachment_id: str, actor: Caller, db: Db) -> Response:
    f = await db.write(service.get_attachment, actor=actor, thread_id=thread_id, attachment_id=attachment_id)
    disposition = "inline" if f.inline_safe else "attachment"
    return Response(
        content=f.data,
        media_type=f.content_type,
        headers={
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(f.filename)}",
            # Even an allowed type must never run as a page in our origin.
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


@router.get("/pools/{pool_id}/threads", response_model=list[schemas.ThreadSummary])
async def pool_queue(pool_id: str, actor: Caller, db: Db) -> list[schemas.ThreadSummary]:
    return await db.read(service.pool_queue, actor=actor, pool_id=pool_id)


__all__ = ["router", "state"]
