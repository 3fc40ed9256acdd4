"""In-process fan-out of committed events to open WebSockets, keyed by user and by session.

Events are published from the writer thread after commit; the hub hops onto the event loop once per burst
and encodes each event once, whatever the number of sockets it reaches.
``redis_hub.RedisHub`` has the same interface and carries them between processes too.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Frames a socket may have waiting; a client that falls this far behind has stopped reading.
QUEUE_MAX = 1000
# Ends a socket's stream; compared by identity, so no event's text can stand for it.
CLOSE = '{"type":"_close"}'
WIPE = '{"type":"wipe"}'
SESSION_ENDED = '{"type":"session_ended"}'
RESYNC = '{"type":"resync"}'


def encode(event: dict[str, Any]) -> str:
    """The frame a socket sends: events are ids only, so plain compact JSON."""
    return json.dumps(event, separators=(",", ":"))


@dataclass(eq=False)
class Subscriber:
    """One open socket: the frames (JSON text) it has yet to send, then CLOSE."""

    user_id: str
    session_id: str
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=QUEUE_MAX))

    def offer(self, frame: str) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            # A client that stopped reading loses its stream rather than the server's memory.
            self.close()

    def close(self) -> None:
        """End the stream after what is queued, or at once when the queue is full."""
        try:
            self.queue.put_nowait(CLOSE)
        except asyncio.QueueFull:
            # The socket's task is not waiting on a full queue: it reads this one next.
            self.queue = asyncio.Queue(maxsize=1)
            self.queue.put_nowait(CLOSE)


# What the writer thread hands over: ("u", user ids, frame) or ("s", session ids, wipe).
Item = tuple[str, list[str], Any]


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[str, set[Subscriber]] = defaultdict(set)
        self._by_session: dict[str, set[Subscriber]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # Handed over by other threads, delivered in order by one callback on the loop per burst: a group
        # commit of fifty sends wakes the loop once, not fifty times.
        self._pending: list[Item] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        # The task that re-checks open sockets' sessions (realtime.api), while any are open.
        self.session_watch: asyncio.Task[None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the running loop. A hub bound again (a restarted app) delivers what waited meanwhile."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        with self._pending_lock:
            self._flush_scheduled = bool(self._pending)
        if self._flush_scheduled:
            loop.call_soon(self._flush)

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

    # -- from any thread -------------------------------------------------------------------------------

    def publish(self, user_ids: Iterable[str], event: dict[str, Any]) -> None:
        users = list(user_ids)
        if users:
            self._hand_over(("u", users, encode(event)))

    def end_sessions(self, session_ids: Iterable[str], wipe: bool) -> None:
        sessions = list(session_ids)
        if sessions:
            self._hand_over(("s", sessions, wipe))

    def _hand_over(self, item: Item) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._pending_lock:
            self._pending.append(item)
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        # Which thread, not ``asyncio.get_running_loop()``: that raises (an exception per event) in the
        # writer thread, the usual caller and the one whose time every send waits on.
        if threading.get_ident() == self._loop_thread and loop.is_running():
            self._flush()  # on the loop already: deliver now, after whatever was handed over before
        elif schedule:
            try:
                loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop closed meanwhile: the next bind delivers
                with self._pending_lock:
                    self._flush_scheduled = False

    # -- on the event loop -----------------------------------------------------------------------------

    def _flush(self) -> None:
        with self._pending_lock:
            items, self._pending = self._pending, []
            self._flush_scheduled = False
        if items:
            self._dispatch(items)

    def _dispatch(self, items: list[Item]) -> None:
        """Deliver a burst to this process's sockets (the Redis hub also sends it to the others)."""
        for kind, ids, arg in items:
            if kind == "u":
                self._deliver(ids, arg)
            else:
                self._end(ids, bool(arg))

    def _deliver(self, user_ids: list[str], frame: str) -> None:
        by_user = self._by_user
        for uid in user_ids:
            subs = by_user.get(uid)
            if subs:
                for sub in subs:
                    sub.offer(frame)

    def _end(self, session_ids: list[str], wipe: bool) -> None:
        for sid in session_ids:
            for sub in list(self._by_session.get(sid, ())):
                if wipe:
                    sub.offer(WIPE)
                sub.offer(SESSION_ENDED)
                sub.close()

    def session_ids(self) -> list[str]:
        return list(self._by_session)

    def close_here(self, session_ids: Iterable[str]) -> None:
        """End these sessions' sockets in this process only (each process checks its own)."""
        self._end(list(session_ids), False)

    async def aclose(self) -> None:
        """Nothing to release in one process; the Redis hub stops its connections here."""

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._by_user.values())
