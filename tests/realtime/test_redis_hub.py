"""The Redis hub: events cross processes once, the writer thread never waits on Redis, and a hub
survives Redis restarting. Two hubs on one loop stand for two processes (the scale tests use real ones).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from lockbox.app import create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.realtime.hub import Hub, Subscriber
from lockbox.realtime.redis_hub import RedisHub
from tests.factories import Api, auth, make_pool, make_team, make_user
from tests.serverproc import RedisServer


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def _connected(*hubs: RedisHub) -> None:
    for hub in hubs:
        await asyncio.wait_for(hub.connected.wait(), 10)


async def _drain(sub: Subscriber, quiet_s: float = 0.3) -> list[dict[str, Any]]:
    """Everything the subscriber gets until nothing more comes for ``quiet_s`` (frames are JSON text)."""
    events = []
    while True:
        try:
            events.append(json.loads(await asyncio.wait_for(sub.queue.get(), quiet_s)))
        except TimeoutError:
            return events


def test_each_process_delivers_every_event_once(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        a = RedisHub(redis_url, channel=f"{redis_prefix}:events")
        b = RedisHub(redis_url, channel=f"{redis_prefix}:events")
        loop = asyncio.get_running_loop()
        a.bind(loop)
        b.bind(loop)
        await _connected(a, b)
        on_a, on_b, elsewhere = a.subscribe("u1", "s1"), b.subscribe("u1", "s2"), b.subscribe("u2", "s3")
        # From another thread, as the writer does after commit.
        threading.Thread(target=a.publish, args=(["u1"], {"type": "message", "thread_id": "t1"})).start()
        assert await _drain(on_a) == [{"type": "message", "thread_id": "t1"}]
        assert await _drain(on_b) == [{"type": "message", "thread_id": "t1"}]
        assert await _drain(elsewhere) == []
        b.end_sessions(["s1"], True)
        assert await _drain(on_a) == [{"type": "wipe"}, {"type": "session_ended"}, {"type": "_close"}]
        assert await _drain(on_b) == []
        await a.aclose()
        await b.aclose()

    _run(scenario)


def test_other_installations_on_the_same_redis_are_not_heard(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        ours = RedisHub(redis_url, channel=f"{redis_prefix}:events")
        theirs = RedisHub(redis_url, channel=f"{redis_prefix}-other:events")
        loop = asyncio.get_running_loop()
        ours.bind(loop)
        theirs.bind(loop)
        await _connected(ours, theirs)
        sub = ours.subscribe("u1", "s1")
        theirs.publish(["u1"], {"type": "message", "thread_id": "t9"})
        assert await _drain(sub) == []
        await ours.aclose()
        await theirs.aclose()

    _run(scenario)


def test_the_writer_thread_never_waits_for_an_unreachable_redis() -> None:
    async def scenario() -> None:
        # A non-routable address: connecting hangs until its timeout rather than failing fast.
        hub = RedisHub("redis://10.255.255.1:6379/0", channel="lockbox-unreachable:events")
        hub.bind(asyncio.get_running_loop())
        sub = hub.subscribe("u1", "s1")
        took: list[float] = []

        def writer() -> None:
            started = time.perf_counter()
            for n in range(1000):
                hub.publish(["u1"], {"type": "message", "thread_id": f"t{n}"})
            took.append(time.perf_counter() - started)

        thread = threading.Thread(target=writer)
        thread.start()
        await asyncio.to_thread(thread.join)
        events = await _drain(sub)
        # Local sockets still get everything; Redis is retried in the background.
        assert len(events) == 1000 and not hub.connected.is_set()
        assert took[0] < 1.0, f"1000 publishes took {took[0]:.2f} s"  # the connect timeout alone is 2 s
        await hub.aclose()

    _run(scenario)


def test_hubs_reconnect_after_redis_restarts(private_redis: RedisServer) -> None:
    async def scenario() -> None:
        a = RedisHub(private_redis.url)
        b = RedisHub(private_redis.url)
        loop = asyncio.get_running_loop()
        a.bind(loop)
        b.bind(loop)
        await _connected(a, b)
        on_b = b.subscribe("u1", "s1")
        await asyncio.to_thread(private_redis.stop)
        await asyncio.sleep(0.5)
        assert not b.connected.is_set()
        a.publish(["u1"], {"type": "message", "thread_id": "lost"})  # while Redis is down
        await asyncio.to_thread(private_redis.start)
        await _connected(a, b)
        events = await _drain(on_b, quiet_s=1.0)
        # Whatever was missed, the client is told to refetch; the event held while away is flushed.
        assert {"type": "resync"} in events
        a.publish(["u1"], {"type": "message", "thread_id": "t2"})
        assert await _drain(on_b) == [{"type": "message", "thread_id": "t2"}]
        await a.aclose()
        await b.aclose()

    _run(scenario)


def test_the_server_uses_the_redis_hub_when_configured(
    settings: Settings, clock: FrozenClock, redis_url: str, redis_prefix: str
) -> None:
    app = create_app(settings.model_copy(update={"redis_url": redis_url, "redis_prefix": redis_prefix}),
                     clock=clock, migrate=False)
    assert isinstance(app.state.lockbox.hub, RedisHub)
    with TestClient(app, base_url="https://testserver") as client:
        db = app.state.lockbox.db
        make_team(db, "team-a")
        nurse = make_user(db, "nurse", care_teams=["team-a"])
        make_pool(db, "nurse-triage", ["nurse"], members=[nurse])
        patient = make_user(db, "patient", care_teams=["team-a"])
        with client.websocket_connect("/api/v1/events", headers=auth(nurse)) as ws:
            assert ws.receive_json()["type"] == "ready"
            tid = Api(client, patient).post("/threads", json={"subject": "Q", "body": "hello"}).json()["id"]
            first = ws.receive_json()
            assert first["thread_id"] == tid
            # A probe published after the send comes next: the send's event was not delivered twice.
            app.state.lockbox.hub.publish([nurse.id], {"type": "probe"})
            kinds = []
            while not kinds or kinds[-1] != "probe":
                kinds.append(ws.receive_json()["type"])
            assert first["type"] not in kinds


def test_a_burst_from_the_writer_crosses_redis_as_one_message_in_order(redis_url: str, redis_prefix: str) -> None:
    """A group commit hands over many events at once: one wake-up of the loop, one PUBLISH, same order."""
    async def scenario() -> None:
        channel = f"{redis_prefix}:events"
        a, b = RedisHub(redis_url, channel=channel), RedisHub(redis_url, channel=channel)
        loop = asyncio.get_running_loop()
        a.bind(loop)
        b.bind(loop)
        await _connected(a, b)
        spy = aioredis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        await spy.subscribe(channel)
        on_b = b.subscribe("u1", "s1")

        def writer() -> None:  # one batch's after-commit callbacks, back to back
            for n in range(50):
                a.publish(["u1", "u2"], {"type": "message", "thread_id": "t1", "seq": n})
            a.end_sessions(["s9"], False)

        await asyncio.to_thread(writer)
        events = await _drain(on_b)
        assert [e["seq"] for e in events] == list(range(50))
        messages = []
        for _ in range(20):  # None for the subscription's own confirmation, then when nothing is left
            m = await spy.get_message(timeout=0.1)
            if m is not None:
                messages.append(m["data"])
        assert len(messages) < 50, "a burst is not one PUBLISH per event"
        assert sum(m.count(b"\n") for m in messages) == 51  # 50 events and one ended session, origin lines aside
        await spy.aclose()
        await a.aclose()
        await b.aclose()

    _run(scenario)


def test_a_malformed_message_on_the_channel_is_ignored(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        channel = f"{redis_prefix}:events"
        hub = RedisHub(redis_url, channel=channel)
        hub.bind(asyncio.get_running_loop())
        await _connected(hub)
        sub = hub.subscribe("u1", "s1")
        client = aioredis.Redis.from_url(redis_url)
        for junk in (b"other\nnot a line", b"other\nx\tu1\t{}", b"\xff\xfe", b"other\nu\t\t{}"):
            await client.publish(channel, junk)
        await client.publish(channel, b'other\nu\tu1\t{"type":"message","thread_id":"t1"}')
        assert await _drain(sub) == [{"type": "message", "thread_id": "t1"}]
        await client.aclose()
        await hub.aclose()

    _run(scenario)


def test_an_event_is_encoded_once_for_every_socket_it_reaches() -> None:
    async def scenario() -> None:
        hub = Hub()
        hub.bind(asyncio.get_running_loop())
        subs = [hub.subscribe("u1", f"s{n}") for n in range(3)] + [hub.subscribe("u2", "s9")]
        hub.publish(["u1", "u2"], {"type": "message", "thread_id": "t1"})
        frames = [s.queue.get_nowait() for s in subs]
        assert all(f is frames[0] for f in frames)
        assert json.loads(frames[0]) == {"type": "message", "thread_id": "t1"}

    _run(scenario)


def test_a_hub_bound_again_delivers_what_waited_and_keeps_delivering() -> None:
    """A restarted app binds its hub to a new loop: a hand-over left pending on the old one is not lost."""
    hub = Hub()
    old = asyncio.new_event_loop()
    hub.bind(old)
    hub.publish(["u1"], {"type": "message", "thread_id": "t1"})  # scheduled on a loop that will never run
    old.close()

    async def scenario() -> None:
        hub.bind(asyncio.get_running_loop())
        sub = hub.subscribe("u1", "s1")
        await asyncio.to_thread(hub.publish, ["u1"], {"type": "message", "thread_id": "t2"})
        assert [e["thread_id"] for e in await _drain(sub)] == ["t1", "t2"]

    _run(scenario)
