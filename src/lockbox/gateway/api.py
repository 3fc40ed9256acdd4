"""Gateway routes: a staff member's app passwords for sending secure mail from a mail client."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from lockbox.gateway import schemas, service
from lockbox.http import Caller, Db

router = APIRouter(tags=["gateway"])
PasswordId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$")]


@router.post("/me/gateway-passwords", status_code=201)
async def issue_password(body: schemas.PasswordIn, actor: Caller, db: Db) -> schemas.PasswordCreated:
    return await db.write(service.issue_password, actor=actor, label=body.label.strip())


@router.get("/me/gateway-passwords")
async def list_passwords(actor: Caller, db: Db) -> list[schemas.PasswordOut]:
    return await db.read(service.list_passwords, actor=actor)


@router.delete("/me/gateway-passwords/{password_id}", status_code=204)
async def revoke_password(password_id: PasswordId, actor: Caller, db: Db) -> None:
    await db.write(service.revoke_password, actor=actor, password_id=password_id)
