"""A hub that also carries events between processes over Redis pub/sub, for several ``lockbox serve``
processes (and ``lockbox worker`` processes) on one database.

Each process delivers what it publishes to its own sockets at once and sends it to Redis for the
others; it ignores its own messages coming back, so nothing is delivered twice. Redis is reached only
from the event loop: the writer thread hands events over with ``call_soon_threadsafe`` and never waits.
Events are ids only (no PHI), so nothing sensitive crosses Redis.

A Redis message carries a burst: the origin on its first line, then one line per event, ``u<TAB>user
ids<TAB>the event's JSON`` (forwarded to sockets as it is, never decoded) or ``s<TAB>session ids<TAB>1|0``
(end those sessions, wiping or not). Ids are hex and compact JSON holds no tab or newline. Every
process of an installation runs the same version, as they share one database schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from lockbox.realtime.hub import RESYNC, Hub, Item

log = logging.getLogger(__name__)

CHANNEL = "lockbox:events"
# Bursts held while Redis is unreachable; beyond it the oldest are dropped (clients re-sync on "resync").
OUTBOX_MAX = 10_000
RECONNECT_MAX_S = 5.0


class RedisHub(Hub):
    def __init__(self, url: str, *, channel: str = CHANNEL) -> None:
        super().__init__()
        self.url = url
        self.channel = channel
        # Tells this process's own messages apart when Redis echoes them back.
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._outbox: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._thread: threading.Thread | None = None
        self.connected = asyncio.Event()

    # -- the interface the writer thread and the WebSocket route use ---------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the running loop (the server's lifespan): starts the Redis publisher and listener."""
        super().bind(loop)
        self._outbox = asyncio.Queue(maxsize=OUTBOX_MAX)
        self.connected = asyncio.Event()
        self._tasks = [loop.create_task(self._publisher(), name="lockbox-redis-publish"),
                       loop.create_task(self._listener(), name="lockbox-redis-listen")]

    async def aclose(self, flush_s: float = 1.0) -> None:
        """Stop, after a short wait for what is still on its way to Redis (the last commits' events)."""
        if self._outbox is not None and self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), flush_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    # -- for processes without an event loop of their own (``lockbox worker``) -------------------------

    def start_thread(self) -> None:
        """Run the hub on a loop in a daemon thread: a worker process publishes but serves no sockets."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.bind(loop)
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="lockbox-redis-hub", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop_thread(self, timeout: float = 5.0) -> None:
        loop = self._loop
        if self._thread is None or loop is None:
            return
        # Flush what the process published before it goes, within the timeout.
        fut = asyncio.run_coroutine_threadsafe(self._drain_then_close(timeout), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout + 1)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)

    async def _drain_then_close(self, timeout: float) -> None:
        await self.aclose(flush_s=timeout)

    # -- on the event loop -----------------------------------------------------------------------------

    def _dispatch(self, items: list[Item]) -> None:
        super()._dispatch(items)
        # Lines of a burst; the publisher joins what is waiting into one Redis message, since a PUBLISH and
        # every other process's parsing cost per message, not per event.
        self._send("\n".join(f"{kind}\t{','.join(ids)}\t{arg if kind == 'u' else int(bool(arg))}"
                             for kind, ids, arg in items))

    def _send(self, lines: str) -> None:
        outbox = self._outbox
        if outbox is None:
            return
        if outbox.full():
            # Redis has been away a long while: keep the newest events, which clients still care about.
            with contextlib.suppress(asyncio.QueueEmpty):
                outbox.get_nowait()
                outbox.task_done()
        outbox.put_nowait(lines)

    def _client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url, socket_connect_timeout=2, socket_keepalive=True,
                                       health_check_interval=15)

    async def _publisher(self) -> None:
        assert self._outbox is not None
        outbox = self._outbox
        delay = 0.1
        while True:
            client = self._client()
            try:
                while True:
                    batch = [await outbox.get()]
                    while len(batch) < 256 and not outbox.empty():
                        batch.append(outbox.get_nowait())
                    try:
                        # What piled up while the last PUBLISH was on its way goes out as one message.
                        await client.publish(self.channel, "\n".join([self.origin, *batch]))
                    except (RedisError, OSError):
                        # Put the burst back in front, in order, and reconnect.
                        pending = batch + _take_all(outbox)
                        for payload in pending[-OUTBOX_MAX:]:
                            outbox.put_nowait(payload)
                        for _ in batch:
                            outbox.task_done()
                        raise
                    for _ in batch:
                        outbox.task_done()
                    delay = 0.1
            except (RedisError, OSError) as exc:
                log.warning("realtime: publishing to Redis failed (%s); retrying", type(exc).__name__)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _listener(self) -> None:
        delay = 0.1
        lost = False
        while True:
            client = self._client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected.set()
                if lost:
                    # Events published while we were cut off are gone: clients refetch what they show.
                    self._resync()
                    log.info("realtime: Redis subscription restored")
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._receive(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("realtime: Redis subscription lost (%s); reconnecting", type(exc).__name__)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            lost = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _receive(self, data: bytes | str) -> None:
        try:
            text = data.decode() if isinstance(data, bytes) else data
        except UnicodeDecodeError:
            log.warning("realtime: ignored a malformed message from Redis")
            return
        origin, _, body = text.partition("\n")
        if origin == self.origin:
            return
        items: list[Item] = []
        for line in body.split("\n"):
            kind, ids, arg = [*line.split("\t", 2), "", ""][:3]
            if kind not in ("u", "s") or not ids or not arg:
                log.warning("realtime: ignored a malformed message from Redis")
                return
            items.append((kind, ids.split(","), arg if kind == "u" else arg == "1"))
        super()._dispatch(items)

    def _resync(self) -> None:
        for subs in list(self._by_user.values()):
            for sub in list(subs):
                sub.offer(RESYNC)


def _take_all(queue: asyncio.Queue[str]) -> list[str]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
        queue.task_done()
    return items
