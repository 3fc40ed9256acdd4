"""Rate limits per account and per client address on sign-in, sending and uploads, with ``limits``.

Counters live in Redis when ``redis_url`` is set (every process shares them), else in memory.
A refused request is a 429 with Retry-After, rendered like every other domain error.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from lockbox.config import Settings
from lockbox.errors import Throttled, Unauthenticated
from lockbox.http import bearer_token, client_addr, state
from lockbox.identity import sessions

log = logging.getLogger(__name__)

Action = Literal["login", "send", "upload"]
ACTIONS: tuple[Action, ...] = ("login", "send", "upload")
# Sessions whose account is known, so a send costs no extra database read (hashes, not tokens).
ACCOUNT_CACHE_MAX = 50_000
STORAGE_WARN_EVERY_S = 60.0


def storage_for(settings: Settings) -> Storage:
    if not settings.redis_url:
        return MemoryStorage()
    scheme, rest = settings.redis_url.split("://", 1)
    return RedisStorage(f"async+{scheme}://{rest}", implementation="redispy",
                        key_prefix=f"{settings.redis_prefix}:ratelimit",
                        wrap_exceptions=True, socket_connect_timeout=1, socket_timeout=1)


class RateLimits:
    """The configured limits of one process, and the account behind each session it has seen."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.enabled = settings.rate_limits_enabled
        self.storage = storage or storage_for(settings)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.rules: dict[tuple[Action, str], list[RateLimitItem]] = {
            (action, scope): parse_many(getattr(settings, f"rate_{action}_{scope}"))
            for action in ACTIONS for scope in ("account", "address")
        }
        self._accounts: OrderedDict[str, str] = OrderedDict()
        self._warned_at = 0.0

    async def check(self, action: Action, *, account: str | None, address: str | None) -> None:
        """Count one attempt; raise Throttled (429) when the address or the account is over a limit."""
        if not self.enabled:
            return
        for scope, who in (("address", address), ("account", account)):
            if who is None:
                continue
            for item in self.rules[(action, scope)]:
                try:
                    allowed = await self.limiter.hit(item, action, scope, who)
                    if allowed:
                        continue
                    stats = await self.limiter.get_window_stats(item, action, scope, who)
                except StorageError as exc:
                    # Redis away: keep serving (care comes first) and say so, at most once a minute.
                    self._warn(exc)
                    return
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise Throttled(retry, "Too many requests. Try again later.")

    def remember(self, token_hash: str, user_id: str) -> None:
        self._accounts[token_hash] = user_id
        self._accounts.move_to_end(token_hash)
        while len(self._accounts) > ACCOUNT_CACHE_MAX:
            self._accounts.popitem(last=False)

    def account_of(self, token_hash: str) -> str | None:
        return self._accounts.get(token_hash)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= STORAGE_WARN_EVERY_S:
            self._warned_at = now
            log.warning("rate limits not enforced: storage unavailable (%s)", type(exc).__name__)


def rate_limits(app: FastAPI) -> RateLimits:
    """The app's limits, made on first use, on the running loop (the Redis client binds to it)."""
    found: RateLimits | None = getattr(app.state, "lockbox_rate_limits", None)
    if found is None:
        found = RateLimits(app.state.lockbox.settings)
        app.state.lockbox_rate_limits = found
    return found


def _digest(value: str) -> str:
    # Keys in Redis name no one: usernames may be patients' email addresses.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


async def _login_account(request: Request) -> str | None:
    # The API signs in with JSON, the web page with a form: the same account either way.
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = await request.form()  # Starlette keeps the parsed form; the route reads the same one
        username: Any = form.get("username")
    else:
        try:
            body: Any = await request.json()  # Starlette keeps the body; the route reads the same one
        except ValueError:
            return None
        username = body.get("username") if isinstance(body, dict) else None
    if not isinstance(username, str) or not username.strip() or len(username) > 320:
        return None
    return _digest(username.strip().casefold())


async def _session_account(request: Request, limits: RateLimits) -> str | None:
    token = bearer_token(request)
    if not token or len(token) > 200:
        return None  # the route answers 401
    token_hash = sessions.hash_token(token)
    user_id = limits.account_of(token_hash)
    if user_id is None:
        try:
            actor, _ = await state(request).db.read(sessions.resolve_session, token=token)
        except Unauthenticated:
            return None
        user_id = actor.user_id
        limits.remember(token_hash, user_id)
    return user_id


async def enforce(request: Request, action: Action) -> None:
    """Count this request against ``action``'s limits (429 when over). Called by ``limited``, or first
    thing in a route that resolves its caller itself (a reply)."""
    limits = rate_limits(request.app)
    if not limits.enabled:
        return
    if action == "login":
        account = await _login_account(request)
    else:
        account = await _session_account(request, limits)
    await limits.check(action, account=account, address=client_addr(request))


def limited(action: Action) -> Any:
    """A route dependency: ``@router.post(..., dependencies=[limited("send")])``."""

    async def enforce_limits(request: Request) -> None:
        await enforce(request, action)

    return Depends(enforce_limits)


LOGIN = limited("login")
SEND = limited("send")
UPLOAD = limited("upload")
