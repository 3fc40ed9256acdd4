"""Gateway routes: a staff member's app passwords for sending secure mail from a mail client, and the state
of a thread's external deliveries (with a new link when the first did not arrive)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from lockbox.gateway import schemas, service
from lockbox.http import Caller, Db

router = APIRouter(tags=["gateway"])
PasswordId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$")]
ThreadId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
DeliveryId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.post("/me/gateway-passwords", status_code=201)
async def issue_password(body: schemas.PasswordIn, actor: Caller, db: Db) -> schemas.PasswordCreated:
    return await db.write(service.issue_password, actor=actor, label=body.label.strip())


@router.get("/me/gateway-passwords")
async def list_passwords(actor: Caller, db: Db) -> list[schemas.PasswordOut]:
    return await db.read(service.list_passwords, actor=actor)


@router.delete("/me/gateway-passwords/{password_id}", status_code=204)
async def revoke_password(password_id: PasswordId, actor: Caller, db: Db) -> None:
    await db.write(service.revoke_password, actor=actor, password_id=password_id)


@router.get("/threads/{thread_id}/external")
async def external_deliveries(thread_id: ThreadId, actor: Caller, db: Db) -> list[schemas.DeliveryOut]:
    """The thread's external recipients and how far each got: link emailed, failed, opened."""
    return await db.read(service.external_deliveries, actor=actor, thread_id=thread_id)


@router.post("/threads/{thread_id}/external/{delivery_id}/resend", status_code=202)
async def resend_link(thread_id: ThreadId, delivery_id: DeliveryId, actor: Caller, db: Db) -> schemas.DeliveryOut:
    """Email a new link (the previous one stops working); 409 once the link has expired, 429 past the limit."""
    return await db.write(service.resend_link, actor=actor, thread_id=thread_id, delivery_id=delivery_id)
