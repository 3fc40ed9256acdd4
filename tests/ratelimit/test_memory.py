"""The in-memory counters: side by side with the Redis script on a real Redis (the same answers and
Retry-After), and on a clock of our own: a refusal counts only against the limits before it, the previous
window weighs what is left of it, a limit holds across the end of a minute, and windows that no longer
count are forgotten."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from limits import parse

from lockbox.config import Settings
from lockbox.errors import Throttled
from lockbox.ratelimit import RateLimits
from lockbox.ratelimit.memory import SWEEP_EVERY_S, WindowCounters
from tests.ratelimit.test_redis_script import _at, _clear


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# When attempts fall: the previous window's count weighs (1 - elapsed share of the current window), so an
# attempt landing where that weighted count is a whole number is decided by microseconds between the two
# calls. 0.15 s steps put step 12 exactly there (5 * 0.2 = 1.0); these keep every step at least 10 ms of time
# from such an instant for both windows (1 s, 2 s) and any previous count up to 8 (computed, not guessed).
STEP_S = 0.167
OFFSET_S = 0.01

def _settings(tmp_path: Path, **limits: str) -> Settings:
    return Settings(env="test", data_dir=tmp_path).model_copy(update=limits)


async def _attempt(limits: RateLimits, account: str, address: str = "192.0.2.1") -> int | None:
    try:
        await limits.check("send", account=account, address=address)
    except Throttled as exc:
        return exc.retry_after_s
    return None


def test_the_counters_answer_like_the_redis_script(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    """Attempt by attempt, through refusals by each limit and window shifts. Attempts 0.15 s apart: both
    windows start at the first attempt, microseconds apart. The previous window's weight falls continuously,
    so on a stalled machine the two calls of one step can fall either side of the instant a count crosses
    its limit: a disagreement is run again once, from scratch, and fails if it comes back."""
    rules = {"rate_send_address": "5/second", "rate_send_account": "3/second;7/2 second"}

    async def run(prefix: str) -> tuple[int, int | None, int | None] | None:
        in_redis = RateLimits(Settings(env="test", data_dir=tmp_path, redis_url=redis_url, redis_prefix=prefix)
                              .model_copy(update=rules))
        in_memory = RateLimits(_settings(tmp_path, **rules))
        assert in_redis._redis is not None and in_memory._redis is None and in_memory._limiter is None
        answers = []
        started = time.monotonic()
        for step in range(16):
            account = "u2" if step % 4 == 3 else "u1"
            redis_says, memory_says = await _attempt(in_redis, account), await _attempt(in_memory, account)
            if (redis_says is None) != (memory_says is None):
                return step, redis_says, memory_says
            if redis_says is not None and memory_says is not None:
                assert abs(redis_says - memory_says) <= 1, (step, redis_says, memory_says)
            answers.append(memory_says)
            await _at(started + OFFSET_S + STEP_S * (step + 1))
        assert answers.count(None) >= 5 and len(answers) - answers.count(None) >= 5
        return None

    try:
        first = asyncio.run(asyncio.wait_for(run(redis_prefix), 60))
        if first is not None:
            again = asyncio.run(asyncio.wait_for(run(redis_prefix + "-again"), 60))
            assert again is None, (first, again)
    finally:
        _clear(redis_url, redis_prefix)
        _clear(redis_url, redis_prefix + "-again")


def test_a_refusal_counts_only_against_the_limits_before_the_refusing_one() -> None:
    counters = WindowCounters(Clock())
    address, per_minute, per_hour = (2, 60, "address"), (100, 60, "minute"), (3, 3600, "hour")
    assert counters.acquire_in_order([address, per_minute, per_hour]) is None
    assert counters.acquire_in_order([address, per_minute, per_hour]) is None
    refused = counters.acquire_in_order([address, per_minute, per_hour])
    assert refused is not None and refused[:2] == (0, 0) and refused[3] == 2
    # The address refused first: neither account limit counted it.
    assert counters.acquire_in_order([per_minute, per_hour]) is None
    refused = counters.acquire_in_order([(2, 60, "elsewhere"), per_minute, per_hour])
    assert refused is not None and refused[0] == 2 and refused[3] == 3
    # The limits before the hourly one counted the refused attempt; the hourly one did not.
    assert counters._counts[("minute", "current")][0] == 4
    assert counters._counts[("hour", "current")][0] == 3
    assert counters._counts[("elsewhere", "current")][0] == 1


def test_the_previous_window_weighs_what_is_left_of_it(tmp_path: Path) -> None:
    clock = Clock()
    limits = RateLimits(_settings(tmp_path))
    limits._counters = WindowCounters(clock)
    counted = [(parse("2/10 seconds"), ("send", "account", "u1"))]
    # Retry-After as limits reads it from the window (and the script answers): 20 s to live % 10 s, at least 1.
    assert [limits._check_in_memory(counted) for _ in range(3)] == [None, None, 1]
    clock.now += 12.5  # a quarter into the next window: the previous two weigh 1.5
    assert limits._check_in_memory(counted) is None
    # Refused: the sooner of the previous window's next attempt leaving the sliding window (7.5 s of it
    # left, one attempt every 10/2 s: 2.5 s) and the end of the current one (7.5 s).
    assert limits._check_in_memory(counted) == 3


def test_a_limit_holds_across_the_end_of_a_minute() -> None:
    clock = Clock(59.9)
    counters = WindowCounters(clock)
    two = [(2, 60, "k")]
    assert counters.acquire_in_order(two) is None
    clock.now = 60.1
    assert counters.acquire_in_order(two) is None
    clock.now = 61.0
    assert counters.acquire_in_order(two) is not None
    clock.now = 59.9 + 60 + 15  # a quarter into the next window: the two weigh 1.5
    assert counters.acquire_in_order(two) is None
    assert counters.acquire_in_order(two) is not None


def test_windows_that_no_longer_count_are_forgotten() -> None:
    clock = Clock()
    counters = WindowCounters(clock)
    for n in range(20_000):
        assert counters.acquire_in_order([(5, 60, f"address-{n}")]) is None
    assert len(counters) == 20_000
    clock.now += 60  # the next window: the last one still weighs
    counters.acquire_in_order([(5, 60, "someone")])
    assert len(counters) == 20_001
    clock.now += 60 + SWEEP_EVERY_S  # two windows on: nothing of them counts any more
    counters.acquire_in_order([(5, 60, "someone")])
    assert len(counters) == 2  # someone's two windows
