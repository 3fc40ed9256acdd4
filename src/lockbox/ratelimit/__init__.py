"""Rate limits per account and per client address on sign-in, sending and uploads, with ``limits``.

Counters live in Redis when ``redis_url`` is set (every process shares them), else in memory.
A refused request is a 429 with Retry-After, rendered like every other domain error.

Every limit is a ``limits`` sliding window counter. In Redis, the limits of one request are counted by one
script (``_ACQUIRE_IN_ORDER``) in one round trip, on the keys ``limits``' RedisStorage uses, so both see and
keep the same counters. In memory, ``memory.WindowCounters`` counts them as that script does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from typing import Any, Literal

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from lockbox.config import Settings
from lockbox.errors import Throttled, Unauthenticated
from lockbox.http import bearer_token, client_addr, state
from lockbox.identity import sessions
from lockbox.ratelimit.memory import WindowCounters

log = logging.getLogger(__name__)

Action = Literal["login", "send", "upload"]
ACTIONS: tuple[Action, ...] = ("login", "send", "upload")
# Sessions whose account is known, so a send costs no extra database read (hashes, not tokens).
ACCOUNT_CACHE_MAX = 50_000
STORAGE_WARN_EVERY_S = 60.0
# The limits one request counts, in order, each with the identifiers of its counter.
Counted = list[tuple[RateLimitItem, tuple[str, str, str]]]

# ``limits`` 5.8 has no call that counts several limits at once: one ``hit`` per limit is one EVALSHA
# each, three Redis round trips per send (measured at ~180 µs of event-loop CPU in bench/load.py). A
# pipeline of its scripts would count every limit even after one refuses, and a refused request must not
# count against the limits after it. So this script runs ``limits``' acquire_sliding_window.lua (5.8) for
# each limit in order, on the same keys (KEYS: previous and current window of each limit; ARGV: amount
# allowed and window in seconds of each) and stops at the first refusal, as the loop of hits did. The
# refusal brings the window that ``get_window_stats`` would read (after the same shift), for Retry-After:
# no second trip. tests/ratelimit/test_redis_script.py holds it to the library's behaviour on a real Redis.
_ACQUIRE_IN_ORDER = """
for i = 1, #KEYS, 2 do
    local previous_key, current_key = KEYS[i], KEYS[i + 1]
    local limit = tonumber(ARGV[i])
    local expiry = tonumber(ARGV[i + 1]) * 1000
    local current_ttl = tonumber(redis.call('pttl', current_key))
    if current_ttl > 0 and current_ttl < expiry then
        -- the current window is over: it becomes the previous one
        redis.call('rename', current_key, previous_key)
        redis.call('set', current_key, 0, 'PX', current_ttl + expiry)
    end
    local previous_count = tonumber(redis.call('get', previous_key)) or 0
    local previous_ttl = math.max(0, tonumber(redis.call('pttl', previous_key)))
    local current_count = tonumber(redis.call('get', current_key)) or 0
    current_ttl = math.max(0, tonumber(redis.call('pttl', current_key)))
    if limit < 1 or math.floor(previous_count * previous_ttl / expiry) + current_count + 1 > limit then
        return {(i + 1) / 2, previous_count, previous_ttl, current_count, current_ttl}
    end
    if redis.call('exists', current_key) == 1 then
        redis.call('incrby', current_key, 1)
    else
        redis.call('set', current_key, 1, 'PX', expiry * 2)
    end
end
return 0
"""


def _redis_client(redis_url: str) -> aioredis.Redis:
    # The URL as limits' RedisStorage handed it to redis-py (which spells a socket "unix://").
    url = redis_url.replace("redis+unix://", "unix://", 1)
    return aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


def _retry_after(item: RateLimitItem, previous_count: int, previous_ttl_s: float, current_count: int,
                 current_ttl_s: float) -> int:
    """Seconds until ``item`` lets one more through: SlidingWindowCounterRateLimiter.get_window_stats's
    reset time, from the window the script (or the counters in memory) read."""
    if not (previous_count or current_count):
        return 1
    expiry = item.get_expiry()
    previous_reset_in = current_reset_in = math.inf
    if previous_count:
        previous_reset_in = previous_ttl_s % (expiry / previous_count)
    if current_count:
        current_reset_in = current_ttl_s % expiry
    return max(1, math.ceil(min(previous_reset_in, current_reset_in)))


class RateLimits:
    """The configured limits of one process, and the account behind each session it has seen."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.enabled = settings.rate_limits_enabled
        # Redis (one script per request) when configured, else counters in memory; a ``limits`` storage when
        # one is given (the tests hold the other two to it).
        self._redis: aioredis.Redis | None = None
        self._limiter: SlidingWindowCounterRateLimiter | None = None
        self._counters: WindowCounters | None = None
        if storage is not None:
            self._limiter = SlidingWindowCounterRateLimiter(storage)
        elif settings.redis_url:
            self._redis = _redis_client(settings.redis_url)
            self._acquire = self._redis.register_script(_ACQUIRE_IN_ORDER)
            self._key_prefix = f"{settings.redis_prefix}:ratelimit"
        else:
            self._counters = WindowCounters()
        self.rules: dict[tuple[Action, str], list[RateLimitItem]] = {
            (action, scope): parse_many(getattr(settings, f"rate_{action}_{scope}"))
            for action in ACTIONS for scope in ("account", "address")
        }
        self._accounts: OrderedDict[str, str] = OrderedDict()
        self._warned_at = 0.0

    async def check(self, action: Action, *, account: str | None, address: str | None) -> None:
        """Count one attempt; raise Throttled (429) when the address or the account is over a limit.

        The limits are counted in order (the address's, then the account's) up to the first that refuses:
        a refused attempt still counts against the limits before that one, not against it or those after.
        """
        if not self.enabled:
            return
        counted: Counted = [
            (item, (action, scope, who))
            for scope, who in (("address", address), ("account", account)) if who is not None
            for item in self.rules[(action, scope)]
        ]
        if not counted:
            return
        if self._redis is not None:
            retry = await self._check_in_redis(counted)
        elif self._limiter is not None:
            retry = await self._check_in_storage(self._limiter, counted)
        else:
            retry = self._check_in_memory(counted)
        if retry is not None:
            raise Throttled(retry, "Too many requests. Try again later.")

    async def _check_in_redis(self, counted: Counted) -> int | None:
        keys: list[str] = []
        args: list[int] = []
        for item, identifiers in counted:
            # limits' RedisStorage keys: "{prefix}:{<key>}" now, "{prefix}:{<key>}/-1" the window before.
            current = f"{self._key_prefix}:{{{item.key_for(*identifiers)}}}"
            keys += (f"{current}/-1", current)
            args += (item.amount, item.get_expiry())
        try:
            refused = await self._acquire(keys=keys, args=args)
        except RedisError as exc:
            # Redis away: keep serving (care comes first) and say so, at most once a minute.
            self._warn(exc)
            return None
        if not refused:
            return None
        index, previous_count, previous_ttl_ms, current_count, current_ttl_ms = (int(v) for v in refused)
        return _retry_after(counted[index - 1][0], previous_count, previous_ttl_ms / 1000, current_count,
                            current_ttl_ms / 1000)

    def _check_in_memory(self, counted: Counted) -> int | None:
        assert self._counters is not None, "counters in memory are only for a process without Redis"
        refused = self._counters.acquire_in_order(
            [(item.amount, item.get_expiry(), item.key_for(*identifiers)) for item, identifiers in counted])
        if refused is None:
            return None
        index, previous_count, previous_ttl_s, current_count, current_ttl_s = refused
        return _retry_after(counted[index][0], previous_count, previous_ttl_s, current_count, current_ttl_s)

    async def _check_in_storage(self, limiter: SlidingWindowCounterRateLimiter, counted: Counted) -> int | None:
        for item, identifiers in counted:
            try:
                if await limiter.hit(item, *identifiers):
                    continue
                stats = await limiter.get_window_stats(item, *identifiers)
            except StorageError as exc:
                self._warn(exc)
                return None
            return max(1, math.ceil(stats.reset_time - time.time()))
        return None

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
