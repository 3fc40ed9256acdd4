"""Sign-in, enrolment, the signed-in user's sessions and password, and the admin's account actions."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Request, Response

from lockbox import ratelimit
from lockbox.http import SESSION_COOKIE, Caller, CurrentActor, Db, client_addr
from lockbox.identity import service
from lockbox.identity.schemas import (
    EnrolIn,
    EnrolmentCodeOut,
    EnrolOut,
    LoginIn,
    LoginOut,
    MeOut,
    PasswordChangeIn,
    SessionOut,
)

router = APIRouter(tags=["identity"])

T = TypeVar("T")
UserId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$")]
SessionId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$")]


def _accepted(result: T | service.Refused) -> T:
    # Refusals come back as values so their audit row and throttle count commit; report them now.
    if isinstance(result, service.Refused):
        raise result.error
    return result


def _device(request: Request) -> str:
    # Shown back in the device list: printable text only.
    return "".join(ch for ch in request.headers.get("user-agent", "")[:200] if ch.isprintable())


def _set_session_cookie(response: Response, token: str) -> None:
    # No Max-Age: the cookie goes with the browser session; the server enforces the lifetimes.
    response.set_cookie(SESSION_COOKIE, token, path="/", httponly=True, secure=True, samesite="strict")


def _clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=True, samesite="strict")


@router.post("/auth/enrol")
async def enrol(body: EnrolIn, request: Request, db: Db) -> EnrolOut:
    result = await db.write(service.enrol, username=body.username, enrolment_code=body.enrolment_code,
                            password=body.password, client_addr=client_addr(request))
    return EnrolOut(totp_uri=_accepted(result).totp_uri)


@router.post("/auth/login", dependencies=[ratelimit.LOGIN])
async def login(body: LoginIn, request: Request, response: Response, db: Db) -> LoginOut:
    signed_in = _accepted(await service.sign_in(
        db, username=body.username, password=body.password, totp=body.totp,
        device=_device(request), client_addr=client_addr(request),
    ))
    _set_session_cookie(response, signed_in.token)
    return LoginOut(token=signed_in.token, expires_at=signed_in.expires_at, idle_timeout_s=signed_in.idle_timeout_s)


@router.post("/auth/logout", status_code=204)
async def logout(actor: Caller, response: Response, db: Db) -> None:
    await db.write(service.logout, actor=actor)
    _clear_session_cookie(response)


@router.get("/me")
async def me(actor: CurrentActor) -> MeOut:
    return MeOut(id=actor.user_id, username=actor.username, role=actor.role.value, display_name=actor.display_name)


@router.get("/me/sessions")
async def my_sessions(actor: Caller, db: Db) -> list[SessionOut]:
    views = await db.read(service.list_sessions, actor=actor)
    return [SessionOut.model_validate(view) for view in views]


@router.delete("/me/sessions/{session_id}", status_code=204)
async def revoke_my_session(session_id: SessionId, actor: Caller, db: Db) -> None:
    await db.write(service.revoke_session, actor=actor, session_id=session_id)


@router.post("/me/password", status_code=204)
async def change_password(body: PasswordChangeIn, actor: Caller, response: Response, db: Db) -> None:
    _accepted(await db.write(service.change_password, actor=actor, current_password=body.current_password,
                             new_password=body.new_password, totp=body.totp))
    _clear_session_cookie(response)  # every session ended, this one too


@router.post("/admin/users/{user_id}/wipe", status_code=204)
async def wipe_user(user_id: UserId, actor: Caller, db: Db) -> None:
    await db.write(service.wipe_user, actor=actor, user_id=user_id)


@router.post("/admin/users/{user_id}/deactivate", status_code=204)
async def deactivate_user(user_id: UserId, actor: Caller, db: Db) -> None:
    await db.write(service.deactivate_user, actor=actor, user_id=user_id)


@router.post("/admin/users/{user_id}/enrolment-code")
async def reissue_enrolment_code(user_id: UserId, actor: Caller, db: Db) -> EnrolmentCodeOut:
    code = await db.write(service.reissue_enrolment_code, actor=actor, user_id=user_id)
    return EnrolmentCodeOut(enrolment_code=code)
