"""In-process fan-out of committed events to open WebSockets, keyed by user and by session.

Events are published from the writer thread after commit; the hub hops onto the event loop.
``redis_hub.RedisHub`` has the same interface and carries them between processes too.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

CLOSE = {"type": "_close"}


@dataclass(eq=False)
class Subscriber:
    user_id: str
    session_id: str
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))

    def offer(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A client that stopped reading loses its stream rather than the server's memory.
            self.queue = asyncio.Queue(maxsize=1)
            self.queue.put_nowait(CLOSE)


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[str, set[Subscriber]] = defaultdict(set)
        self._by_session: dict[str, set[Subscriber]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        # The task that re-checks open sockets' sessions (realtime.api), while any are open.
        self.session_watch: asyncio.Task[None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, user_id: str, session_id: str) -> Subscriber:
        sub = Subscriber(user_id, session_id)
        self._by_user[user_id].add(sub)
        self._by_session[session_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._by_user[sub.user_id].discard(sub)
        if not self._by_user[sub.user_id]:
            del self._by_user[sub.user_id]
        self._by_session[sub.session_id].discard(sub)
        if not self._by_session[sub.session_id]:
            del self._by_session[sub.session_id]

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def publish(self, user_ids: Iterable[str], event: dict[str, Any]) -> None:
        self._call(self._deliver, list(user_ids), event)

    def end_sessions(self, session_ids: Iterable[str], wipe: bool) -> None:
        self._call(self._end, list(session_ids), wipe)

    def _deliver(self, user_ids: list[str], event: dict[str, Any]) -> None:
        for uid in user_ids:
            for sub in list(self._by_user.get(uid, ())):
                sub.offer(event)

    def _end(self, session_ids: list[str], wipe: bool) -> None:
        for sid in session_ids:
            for sub in list(self._by_session.get(sid, ())):
                if wipe:
                    sub.offer({"type": "wipe"})
                sub.offer({"type": "session_ended"})
                sub.offer(CLOSE)

    def session_ids(self) -> list[str]:
        return list(self._by_session)

    def close_here(self, session_ids: Iterable[str]) -> None:
        """End these sessions' sockets in this process only (each process checks its own)."""
        self._end(list(session_ids), False)

    async def aclose(self) -> None:
        """Nothing to release in one process; the Redis hub stops its connections here."""

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._by_user.values())
