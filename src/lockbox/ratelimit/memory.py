"""Sliding window counters in memory, counted as the Redis script counts them, without ``limits``' sweeps.

``limits`` 5.8's MemoryStorage schedules a pass over every counter it holds after nearly every hit (there is
no setting to space them), so a check costs more the more counters live: about 0.3 ms at 1,000 senders and
1.2 ms at 6,000, on the event loop (bench/ratelimit.py). Its windows are also aligned on the epoch, so two
attempts either side of a window's end weigh less than two: a "2/minute" limit let a third through whenever
a minute ended between them. These counters step as ``_ACQUIRE_IN_ORDER`` steps in Redis (a window starts at
a key's first attempt; the previous window weighs by the share of it still inside the sliding window), so a
limit means the same with and without Redis; tests/ratelimit/test_memory.py holds them to the script side by
side. Windows that no longer count are dropped at most once a second, in one pass.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

# (limit, window in seconds, the limit's key) of each limit one request counts, in order.
Limit = tuple[int, int, str]
SWEEP_EVERY_S = 1.0


class WindowCounters:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (key, "current" or "previous") -> [attempts, when it expires (clock seconds)], as the script's keys
        self._counts: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()  # checks come from the event loop, and from threads (gateway)
        self._swept_at = clock()

    def __len__(self) -> int:
        return len(self._counts)

    def _alive(self, key: tuple[str, str], now: float) -> list[float] | None:
        entry = self._counts.get(key)
        if entry is not None and entry[1] <= now:
            del self._counts[key]
            return None
        return entry

    def acquire_in_order(self, limits: Sequence[Limit]) -> tuple[int, int, float, int, float] | None:
        """Count one attempt against each limit in turn, stopping at the first that refuses. None when all
        let it through; else (index of the refusing limit, previous window's count, seconds it has to live,
        current window's count, seconds it has to live) of that limit, as the script answers."""
        now = self._clock()
        with self._lock:
            if now - self._swept_at >= SWEEP_EVERY_S:
                self._counts = {k: e for k, e in self._counts.items() if e[1] > now}
                self._swept_at = now
            for index, (limit, window, name) in enumerate(limits):
                previous_key, current_key = (name, "previous"), (name, "current")
                current = self._alive(current_key, now)
                if current is not None and current[1] - now < window:
                    # The current window is over: it becomes the previous one.
                    self._counts[previous_key] = current
                    current = self._counts[current_key] = [0, current[1] + window]
                previous = self._alive(previous_key, now)
                previous_count, previous_ttl = (int(previous[0]), previous[1] - now) if previous else (0, 0.0)
                current_count, current_ttl = (int(current[0]), current[1] - now) if current else (0, 0.0)
                if limit < 1 or math.floor(previous_count * previous_ttl / window) + current_count + 1 > limit:
                    return index, previous_count, previous_ttl, current_count, current_ttl
                if current is None:
                    self._counts[current_key] = [1, now + 2 * window]
                else:
                    current[0] += 1
        return None
