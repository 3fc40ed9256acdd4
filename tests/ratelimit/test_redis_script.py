"""The one-round-trip Redis check against ``limits`` itself, on a real Redis: the same answers, the same
counters on the same keys, the same expiry, a refusal that counts only against the limits before it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from lockbox.config import Settings
from lockbox.errors import Throttled
from lockbox.ratelimit import RateLimits

# When attempts fall: the previous window's count weighs (1 - elapsed share of the current window), so an
# attempt landing where that weighted count is a whole number is decided by microseconds between the two
# calls. 0.15 s steps put step 12 exactly there (5 * 0.2 = 1.0); these keep every step at least 10 ms of time
# from such an instant for both windows (1 s, 2 s) and any previous count up to 8 (computed, not guessed).
STEP_S = 0.167
OFFSET_S = 0.01

def _settings(tmp_path: Path, redis_url: str, prefix: str, **limits: str) -> Settings:
    return Settings(env="test", data_dir=tmp_path, redis_url=redis_url,
                    redis_prefix=prefix).model_copy(update=limits)


def _library_storage(redis_url: str, prefix: str) -> RedisStorage:
    """What the limits counted through before: one ``hit`` (one EVALSHA) per limit."""
    return RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=f"{prefix}:ratelimit")


async def _attempt(limits: RateLimits, account: str = "u1", address: str = "192.0.2.1") -> int | None:
    """None when let through, else the Retry-After."""
    try:
        await limits.check("send", account=account, address=address)
    except Throttled as exc:
        return exc.retry_after_s
    return None


async def _at(when: float) -> None:
    """Sleep until ``when`` (monotonic): steps scheduled from the start do not drift towards the windows'
    ends (at 1 s and 2 s) as the time each attempt takes adds up on a loaded machine."""
    await asyncio.sleep(max(0.0, when - time.monotonic()))


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def _keys(redis_url: str, prefix: str) -> dict[str, tuple[int, int]]:
    """Every rate limit counter under ``prefix`` (its name without the prefix): (count, ms to live)."""
    client: Any = redis.Redis.from_url(redis_url)
    found = {}
    for key in client.scan_iter(f"{prefix}:ratelimit:*"):
        name = key.decode().removeprefix(f"{prefix}:ratelimit:")
        found[name] = (int(client.get(key) or 0), int(client.pttl(key)))
    return found


def test_the_script_answers_and_counts_like_one_limits_hit_per_limit(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Both side by side, attempt by attempt, through refusals by each limit and window shifts."""
    rules = {"rate_send_address": "5/second", "rate_send_account": "3/second;7/2 second"}
    old_prefix, new_prefix = f"{redis_prefix}-old", f"{redis_prefix}-new"
    old = RateLimits(_settings(tmp_path, redis_url, old_prefix, **rules),
                     storage=_library_storage(redis_url, old_prefix))
    new = RateLimits(_settings(tmp_path, redis_url, new_prefix, **rules))
    assert new._redis is not None and old._redis is None

    async def test() -> None:
        # The address limit (5/s) refuses when two accounts share it; the account's 3/s and its 7/2s
        # refuse in turn.
        started = time.monotonic()
        for step in range(16):
            who = {"account": "u2" if step % 4 == 3 else "u1", "address": "192.0.2.1"}
            before, after = await _attempt(old, **who), await _attempt(new, **who)
            assert (before is None) == (after is None), (step, before, after)
            if before is not None and after is not None:
                assert abs(before - after) <= 1, (step, before, after)
            await _at(started + OFFSET_S + STEP_S * (step + 1))

    try:
        _run(test)
        old_keys, new_keys = _keys(redis_url, old_prefix), _keys(redis_url, new_prefix)
        assert set(old_keys) == set(new_keys) and len(new_keys) >= 6
        for name, (count, ttl_ms) in new_keys.items():
            assert count == old_keys[name][0], name
            assert abs(ttl_ms - old_keys[name][1]) < 100, name
    finally:
        _clear(redis_url, old_prefix)
        _clear(redis_url, new_prefix)


def test_a_refused_request_counts_only_against_the_limits_before_the_refusing_one(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    limits = RateLimits(_settings(tmp_path, redis_url, redis_prefix, rate_send_address="2/minute",
                                  rate_send_account="100/minute;3/hour"))
    library = SlidingWindowCounterRateLimiter(_library_storage(redis_url, redis_prefix))
    address, per_minute, per_hour = parse("2/minute"), parse("100/minute"), parse("3/hour")

    async def remaining() -> tuple[int, int, int]:
        return ((await library.get_window_stats(address, "send", "address", "192.0.2.9")).remaining,
                (await library.get_window_stats(per_minute, "send", "account", "u9")).remaining,
                (await library.get_window_stats(per_hour, "send", "account", "u9")).remaining)

    async def test() -> None:
        assert await _attempt(limits, "u9", "192.0.2.9") is None
        assert await _attempt(limits, "u9", "192.0.2.9") is None
        assert await remaining() == (0, 98, 1)
        # The address refuses first: the account's limits do not count it.
        assert 1 <= (await _attempt(limits, "u9", "192.0.2.9") or 0) <= 60
        assert await remaining() == (0, 98, 1)
        # From elsewhere, the third send is the account's last of the hour.
        assert await _attempt(limits, "u9", "192.0.2.10") is None
        assert await remaining() == (0, 97, 0)
        # The hourly limit refuses: the address and the per-minute limit before it count it, as they
        # did when each limit was a hit of its own; the hourly one does not.
        retry = await _attempt(limits, "u9", "192.0.2.11")
        assert retry is not None and 60 < retry <= 3600
        assert await remaining() == (0, 96, 0)
        assert (await library.get_window_stats(address, "send", "address", "192.0.2.11")).remaining == 1

    _run(test)


def test_windows_slide_and_the_counters_expire(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    limits = RateLimits(_settings(tmp_path, redis_url, redis_prefix, rate_send_address="2/second",
                                  rate_send_account="1000/second"))

    async def test() -> None:
        assert [await _attempt(limits) for _ in range(3)] == [None, None, 1]
        # No counter outlives two windows.
        assert all(0 < ttl_ms <= 2000 for _, ttl_ms in _keys(redis_url, redis_prefix).values())
        # A quarter window later the window has slid: the two weigh 1.5, so one more gets through.
        await asyncio.sleep(1.25)
        assert await _attempt(limits) is None
        assert await _attempt(limits) == 1
        # Two windows after the last counted attempt, every counter has expired.
        await asyncio.sleep(2.1)
        assert _keys(redis_url, redis_prefix) == {}
        assert [await _attempt(limits) for _ in range(3)] == [None, None, 1]

    _run(test)


def test_the_script_and_limits_share_counters(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    """Processes still counting through ``limits`` (a rolling upgrade) and this one see each other."""
    limits = RateLimits(_settings(tmp_path, redis_url, redis_prefix, rate_send_address="1000/minute",
                                  rate_send_account="3/minute"))
    library = SlidingWindowCounterRateLimiter(_library_storage(redis_url, redis_prefix))
    item = parse("3/minute")

    async def test() -> None:
        assert await library.hit(item, "send", "account", "u1")
        assert await library.hit(item, "send", "account", "u1")
        assert await _attempt(limits) is None
        assert not await library.test(item, "send", "account", "u1")
        assert await _attempt(limits) is not None

    _run(test)


def test_one_round_trip_per_check(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    limits = RateLimits(_settings(tmp_path, redis_url, redis_prefix, rate_send_address="2/minute",
                                  rate_send_account="200/second;15000/minute"))
    assert limits._redis is not None
    calls: list[str] = []
    execute = limits._redis.execute_command

    async def counted(*args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return await execute(*args, **options)

    limits._redis.execute_command = counted  # type: ignore[method-assign]

    async def test() -> None:
        await _attempt(limits)  # the first may load the script
        calls.clear()
        let_through, refused = [await _attempt(limits) for _ in range(2)]
        assert let_through is None and refused is not None
        assert calls == ["EVALSHA", "EVALSHA"]

    _run(test)


def test_redis_going_away_lets_requests_through(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.serverproc import free_port

    limits = RateLimits(_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0", "down",
                                  rate_send_account="1/minute"))
    started = time.monotonic()
    _run(lambda: _all_through(limits))
    assert time.monotonic() - started < 10
    assert [r.getMessage() for r in caplog.records if r.name == "lockbox.ratelimit"] == [
        "rate limits not enforced: storage unavailable (ConnectionError)"]


async def _all_through(limits: RateLimits) -> None:
    assert [await _attempt(limits) for _ in range(3)] == [None] * 3


def _clear(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
