"""Health endpoints; ``/ping`` is the no-op the send benchmark measures the HTTP stack's ceiling with."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.orm import Session

from lockbox.http import Db

router = APIRouter(tags=["system"])


def _ready(session: Session) -> bool:
    session.execute(text("SELECT 1"))
    return True


@router.get("/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}


@router.get("/healthz")
async def healthz(db: Db) -> dict[str, bool]:
    return {"ok": await db.read(_ready)}
