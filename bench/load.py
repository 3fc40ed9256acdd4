"""Load with 1,000 simulated users on one and on two server processes (PostgreSQL + Redis, issue 7).

Usage: .venv/bin/python bench/load.py [--duration 10] [--users 1000] [--rate 200] [--clients 2]

A clinic of ``--users`` people (bench/common.py: 80% patients over ten care teams, staff, the routing rules'
pools), each holding one WebSocket. Every patient has a thread that a nurse of their team started and that
the patient's first reply routed into a pool; then the two of them write to each other. Four phases: one
process then two, as fast as the senders go (closed loop) and at a fixed rate (open loop, with a bounded
number of sends in flight). With two processes every send goes through the process the other person's
socket is not on, so every push measured crossed Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

import httpx  # noqa: E402
import redis  # noqa: E402
from bench.common import (  # noqa: E402
    ScaledClinic,
    children_cpu_seconds,
    cpu_of,
    cpu_seconds,
    cpu_used,
    pg_database,
    rss_mib,
    seed_clinic,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from tests.serverproc import ServerProcess, seeded_database  # noqa: E402
from websockets.asyncio.client import ClientConnection  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

from lockbox.config import Settings  # noqa: E402

REDIS_URL = os.environ.get("LOCKBOX_TEST_REDIS", "redis://127.0.0.1:6379/0")
SCALE_BUDGET = 1.6  # two processes deliver at least 1.6x one
PUSH_P99_BUDGET_MS = 100.0
CONCURRENCY = 64  # senders in flight in the closed-loop phases, over all client processes
MAX_IN_FLIGHT = 128  # open loop: sends pending at once, over all client processes; past it a send is skipped
HELD = 0.95  # open loop: the rate counts as held when at least this share of the scheduled sends went out
LATE_S = 1.0  # how long sockets keep listening after the last send
NOISY = 0.2  # other processes' CPU (share of one core) above which a phase is flagged as measuring them too
KEEP_ALIVE_S = 4.0  # reuse an idle HTTP connection only this long (the server's keep-alive timeout is 5 s)

# Each patient's first reply, by topic, in a primary-care mix: routing sends the thread to that topic's pool.
FIRST_REPLIES = [
    (40, "Thanks, the swelling in my ankle is going down, but it still aches at night."),
    (20, "Could you send a refill of my lisinopril to the pharmacy? I have three pills left."),
    (15, "Are my blood test results back yet?"),
    (15, "I need to reschedule my appointment next Tuesday, can we move it to Thursday?"),
    (5, "I got a bill for the visit that my insurance should have covered."),
    (5, "Can you update my mailing address please?"),
]

console = Console(width=None if sys.stdout.isatty() else 200)


# -- the clinic's conversations -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Conversation:
    thread_id: str
    people: tuple[int, int]  # user indexes (into the token list): the patient, the nurse who started it
    pool: str | None
    followers: int  # who hears of a message in it: members, the pool's members and the assignee, once each


def _first_reply(i: int) -> str:
    weights = [w for w, _ in FIRST_REPLIES]
    return random.Random(i).choices([b for _, b in FIRST_REPLIES], weights)[0]


async def open_conversations(base_url: str, clinic: ScaledClinic) -> list[Conversation]:
    """Each patient's thread: a nurse of their team writes, the patient answers (routing picks the pool), and
    the thread as the nurse then sees it says who follows it."""
    everyone = clinic.everyone
    index = {p.id: i for i, p in enumerate(everyone)}
    pools = {name: {p.id for p in members} for name, members in clinic.pools.items()}
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=base_url + "/api/v1", limits=limits, timeout=60) as client:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> Conversation:
            patient = clinic.patients[i]
            nurses = clinic.on_team(clinic.team_of[patient.id], "nurse") or clinic.staff["nurse"]
            nurse = nurses[(i // len(clinic.teams)) % len(nurses)]
            as_nurse = {"Authorization": f"Bearer {nurse.token}"}
            async with sem:
                r = await client.post("/threads", headers=as_nurse,
                                      json={"subject": "Follow-up", "body": "How are you feeling today?",
                                            "patient": patient.username, "confirm_recipients": True})
                r.raise_for_status()
                tid = r.json()["id"]
                r = await client.post(f"/threads/{tid}/messages", headers={"Authorization": f"Bearer {patient.token}"},
                                      json={"body": _first_reply(i)})
                r.raise_for_status()
                r = await client.get(f"/threads/{tid}", headers=as_nurse)
                r.raise_for_status()
                thread = r.json()
            followers = {p["id"] for p in thread["participants"]} | pools.get(thread["pool"], set())
            if thread["assignee"]:
                followers.add(thread["assignee"])
            return Conversation(tid, (index[patient.id], index[nurse.id]), thread["pool"], len(followers))

        return list(await asyncio.gather(*(one(i) for i in range(len(clinic.patients)))))


# -- one client process -------------------------------------------------------------------------------------

class RawHttp:
    """Keep-alive HTTP/1.1 POSTs over asyncio streams. On a machine of two cores the load generator's CPU is
    taken from the servers it measures: this costs a fraction of an httpx request's CPU."""

    def __init__(self, url: str, connections: int) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port or 80)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(connections)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer, since = self._idle.pop()
            # uvicorn closes a connection idle for 5 s: one about to be closed would fail the request.
            if time.monotonic() - since < KEEP_ALIVE_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, token: str, body: bytes) -> tuple[int, bytes]:
        async with self._slots:
            reader, writer = await self._connection()
            try:
                writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (path.encode(), self.host.encode(), self.port, token.encode(), len(body), body))
                head = await reader.readuntil(b"\r\n\r\n")
                status, length, keep = int(head[9:12]), -1, True
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        keep = False
                if length < 0:
                    raise ValueError("a response without Content-Length")
                data = await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            if keep:
                self._idle.append((reader, writer, time.monotonic()))
            else:
                writer.close()
            return status, data

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle = []


@dataclass
class Plan:
    tokens: list[str]  # per user index
    socket_on: list[str]  # per user index: the server URL their socket is on
    servers: list[str]
    my_sockets: list[int]  # user indexes whose sockets this process holds
    conversations: list[Conversation]  # every conversation (indexes stay the same in every process)
    my_conversations: list[int]  # those this process sends in
    mode: str  # "closed" or "open"
    seconds: float
    concurrency: int  # closed loop: senders in this process
    rate: float  # open loop: sends per second from this process
    max_in_flight: int  # open loop, in this process


@dataclass
class Outcome:
    sends: list[tuple[int, int, str, float, float]] = field(default_factory=list)  # conv, sender, id, start, ack
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)  # HTTP status or exception
    throttled: int = 0
    scheduled: int = 0  # open loop: sends the schedule called for
    skipped: int = 0  # open loop: scheduled while MAX_IN_FLIGHT sends were pending, so not sent
    arrivals: dict[int, dict[str, float]] = field(default_factory=dict)  # user index -> message id -> arrival
    events: Counter[str] = field(default_factory=Counter)  # by type, over every socket
    seconds: float = 0.0
    cpu_s: float = 0.0
    sockets: int = 0
    dropped: int = 0  # sockets the server closed during the phase


async def _listen(ws: ClientConnection, arrived: dict[str, float], out: Outcome) -> None:
    try:
        async for raw in ws:
            event = json.loads(raw)
            out.events[event.get("type", "?")] += 1
            if event.get("type") == "message":
                arrived.setdefault(event["message_id"], time.monotonic())
    except asyncio.CancelledError:
        raise
    except Exception:
        out.dropped += 1


def _via(plan: Plan, receiver: int) -> str:
    """The server that does not hold the receiver's socket (with one server, that one)."""
    others = [url for url in plan.servers if url != plan.socket_on[receiver]]
    return others[0] if others else plan.servers[0]


async def _client_main(plan: Plan, barrier: Any) -> Outcome:
    out = Outcome()
    sockets, listeners = [], []
    for u in plan.my_sockets:
        url = plan.socket_on[u].replace("http://", "ws://") + "/api/v1/events"
        ws = await ws_connect(url, additional_headers={"Authorization": f"Bearer {plan.tokens[u]}"},
                              max_queue=None, compression=None, proxy=None, ping_interval=None)
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        out.arrivals[u] = {}
        sockets.append(ws)
        listeners.append(asyncio.create_task(_listen(ws, out.arrivals[u], out)))
    out.sockets = len(sockets)
    per_server = max(plan.concurrency, plan.max_in_flight, 16)
    clients = {url: RawHttp(url, per_server) for url in plan.servers}

    async def send(c: int, who: int, n: int) -> None:
        conv = plan.conversations[c]
        sender, receiver = conv.people[who], conv.people[1 - who]
        body = (f"Thanks, the swelling in my ankle is going down ({n})" if who == 0
                else f"Good to hear. Keep it raised and let us know if it gets worse ({n}).")
        started = time.monotonic()
        try:
            status, data = await clients[_via(plan, receiver)].post(
                f"/api/v1/threads/{conv.thread_id}/messages", plan.tokens[sender],
                json.dumps({"body": body}).encode())
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            out.errors += 1
            out.error_kinds[type(exc).__name__] += 1
            return
        acked = time.monotonic()
        if status != 201:
            out.errors += 1
            out.throttled += status == 429
            out.error_kinds[str(status)] += 1
            return
        out.sends.append((c, who, json.loads(data)["id"], started, acked))

    rng = random.Random(os.getpid())
    await asyncio.to_thread(barrier.wait)  # every process has its sockets open
    listened_from = time.process_time()
    started = time.monotonic()
    deadline = started + plan.seconds
    counter = 0
    if plan.mode == "closed":
        async def sender() -> None:
            nonlocal counter
            while time.monotonic() < deadline:
                counter += 1
                await send(rng.choice(plan.my_conversations), counter % 2, counter)

        await asyncio.gather(*(sender() for _ in range(plan.concurrency)))
    else:
        pending: set[asyncio.Task[None]] = set()
        interval = 1.0 / plan.rate
        next_at = started
        while next_at < deadline:
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at += interval
            out.scheduled += 1
            if len(pending) >= plan.max_in_flight:
                out.skipped += 1  # the servers are behind: sending more would only measure a queue
                continue
            counter += 1
            task = asyncio.create_task(send(rng.choice(plan.my_conversations), counter % 2, counter))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
    out.seconds = time.monotonic() - started
    await asyncio.to_thread(barrier.wait)  # every process has sent its last message
    await asyncio.sleep(LATE_S)
    out.cpu_s = time.process_time() - listened_from
    for task in listeners:
        task.cancel()
    for ws in sockets:
        await ws.close()
    for client in clients.values():
        client.close()
    return out


def _client_process(plan: Plan, barrier: Any, conn: Any) -> None:
    conn.send(asyncio.run(_client_main(plan, barrier)))
    conn.close()


# -- servers and phases -------------------------------------------------------------------------------------

@dataclass
class Phase:
    processes: int
    mode: str
    load_avg: float
    sends: list[tuple[Conversation, int, str, float, float]]
    push_ms: list[float]
    push_after_ack_ms: list[float]
    missing: int
    errors: int
    error_kinds: Counter[str]
    throttled: int
    scheduled: int
    skipped: int
    events: Counter[str]
    expected_events: int
    seconds: float
    server_cpu: list[float]  # per server, share of one core
    pg_cpu: float
    redis_cpu: float
    client_cpu: float
    machine_cpu: float  # every process on the machine, ours and anybody else's
    rss_mib: list[float]
    dropped: int

    @property
    def rate(self) -> float:
        return len(self.sends) / self.seconds if self.seconds else 0.0

    @property
    def others_cpu(self) -> float:
        return max(0.0, self.machine_cpu - sum(self.server_cpu) - self.pg_cpu - self.redis_cpu - self.client_cpu)

    @property
    def held(self) -> bool:
        return self.mode == "closed" or (self.scheduled > 0 and len(self.sends) >= HELD * self.scheduled)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _machine_busy_s() -> float:
    """CPU seconds every core spent busy so far (/proc/stat), to see what else ran during a phase."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in
                                                                Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_phase(servers: list[ServerProcess], tokens: list[str], conversations: list[Conversation], mode: str,
              seconds: float, clients: int, rate: float, py_spy: str | None = None, profile_to: Path | None = None
              ) -> Phase:
    urls = [s.base_url for s in servers]
    # Spread the sockets over the processes by user, as a load balancer would.
    socket_on = [urls[u % len(urls)] for u in range(len(tokens))]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    plans = [Plan(tokens, socket_on, urls, list(range(c, len(tokens), clients)), conversations,
                  list(range(c, len(conversations), clients)), mode, seconds, max(1, CONCURRENCY // clients),
                  rate / clients, max(1, MAX_IN_FLIGHT // clients)) for c in range(clients)]
    pipes, procs = [], []
    for plan in plans:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client_process, args=(plan, barrier, child))
        p.start()
        pipes.append(parent)
        procs.append(p)
    barrier.wait(timeout=300)
    load_avg = os.getloadavg()[0]
    # A server's CPU includes its children (writer process, emergency-check helpers): they are its work.
    before = [cpu_seconds(s.pid) + children_cpu_seconds(s.pid) for s in servers]
    pg_before, redis_before = cpu_of("postgres"), cpu_of("redis-server")
    busy_before = _machine_busy_s()
    started = time.monotonic()
    spies = []
    if py_spy and profile_to is not None:
        for n, s in enumerate(servers):
            out = profile_to / f"{len(servers)}proc-{mode}-{'ab'[n]}.txt"
            spies.append(subprocess.Popen([py_spy, "record", "-p", str(s.pid), "-d", str(int(seconds)), "-r", "50",
                                           "-f", "raw", "-o", str(out), "--nonblocking"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    barrier.wait(timeout=seconds + 120)
    elapsed = time.monotonic() - started
    busy = (_machine_busy_s() - busy_before) / elapsed
    for spy in spies:
        spy.wait(timeout=60)
    server_cpu = [(cpu_seconds(s.pid) + children_cpu_seconds(s.pid) - b) / elapsed
                  for s, b in zip(servers, before, strict=True)]
    pg_cpu, redis_cpu = cpu_used(pg_before, "postgres") / elapsed, cpu_used(redis_before, "redis-server") / elapsed
    results: list[Outcome] = [pipe.recv() for pipe in pipes]
    for p in procs:
        p.join()
    arrivals: dict[int, dict[str, float]] = {}
    for r in results:
        arrivals.update(r.arrivals)
    sends, push, after_ack, missing = [], [], [], 0
    for r in results:
        for c, who, message_id, sent_at, acked_at in r.sends:
            conv = conversations[c]
            sends.append((conv, who, message_id, sent_at, acked_at))
            at = arrivals[conv.people[1 - who]].get(message_id)
            if at is None:
                missing += 1
                continue
            push.append((at - sent_at) * 1000)
            after_ack.append((at - acked_at) * 1000)
    events: Counter[str] = Counter()
    error_kinds: Counter[str] = Counter()
    for r in results:
        events.update(r.events)
        error_kinds.update(r.error_kinds)
    return Phase(
        processes=len(servers), mode=mode, load_avg=load_avg, sends=sends, push_ms=push, push_after_ack_ms=after_ack,
        missing=missing, errors=sum(r.errors for r in results), error_kinds=error_kinds,
        throttled=sum(r.throttled for r in results),
        scheduled=sum(r.scheduled for r in results), skipped=sum(r.skipped for r in results), events=events,
        expected_events=sum(s[0].followers for s in sends), seconds=max(r.seconds for r in results),
        server_cpu=server_cpu, pg_cpu=pg_cpu, redis_cpu=redis_cpu,
        client_cpu=sum(r.cpu_s for r in results) / elapsed, machine_cpu=busy, rss_mib=[rss_mib(s.pid) for s in servers],
        dropped=sum(r.dropped for r in results))


def settle(server: ServerProcess, limit_s: float = 90.0) -> None:
    """Wait for a fresh server's start-up work (it trains the triage model in the background) to end,
    so it is not measured as load."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(server.pid)
        time.sleep(1.0)
        if cpu_seconds(server.pid) - before < 0.1:
            return


def describe(clinic: ScaledClinic, conversations: list[Conversation]) -> None:
    by_pool = Counter(c.pool or "(care team)" for c in conversations)
    followers = Counter(c.followers for c in conversations)
    staff = ", ".join(f"{len(people)} {role}" for role, people in clinic.staff.items())
    pools = ", ".join(f"{name} {len(members)}" for name, members in clinic.pools.items())
    console.print(f"clinic: {len(clinic.patients)} patients, {staff}; pools (members): {pools}")
    console.print("threads per pool after the patients' first replies: "
                  + ", ".join(f"{pool} {n}" for pool, n in by_pool.most_common()))
    console.print("followers per thread (threads): "
                  + ", ".join(f"{k} ({n})" for k, n in sorted(followers.items())))


def report(phases: list[Phase], args: argparse.Namespace, started: float) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    table = Table(title=f"bench/load.py — {args.users} users with one WebSocket each, {os.cpu_count()} cores ({cpu}), "
                        f"PostgreSQL + Redis, {args.duration:.0f} s per phase, {args.clients} client processes")
    for col in ("processes", "load", "load avg", "msg/s", "held", "send p50/p99 ms", "push p50/p99 ms",
                "push-ack p99 ms", "missing", "errors (429)", "events/send (expected)", "server CPU",
                "CPU ms/msg", "PG CPU", "Redis CPU", "client CPU", "others' CPU", "RSS MiB"):
        table.add_column(col, justify="right")
    for p in phases:
        sent = len(p.sends)
        send_ms = [(s[4] - s[3]) * 1000 for s in p.sends]
        held = "-" if p.mode == "closed" else (
            f"{'yes' if p.held else 'NO'} {sent}/{p.scheduled}" + (f", {p.skipped} skipped" if p.skipped else ""))
        per_msg = (sum(p.server_cpu) * p.seconds * 1000 / sent) if sent else float("nan")
        table.add_row(
            str(p.processes), "max" if p.mode == "closed" else f"{args.rate:.0f}/s", f"{p.load_avg:.1f}",
            f"{p.rate:,.0f}", held, f"{_pct(send_ms, .5):,.0f} / {_pct(send_ms, .99):,.0f}",
            f"{_pct(p.push_ms, .5):,.0f} / {_pct(p.push_ms, .99):,.0f}", f"{_pct(p.push_after_ack_ms, .99):,.0f}",
            str(p.missing), f"{p.errors} ({p.throttled})",
            f"{p.events['message'] / sent if sent else 0:.2f} ({p.expected_events / sent if sent else 0:.2f})",
            " + ".join(f"{c:.0%}" for c in p.server_cpu), f"{per_msg:.1f}", f"{p.pg_cpu:.0%}", f"{p.redis_cpu:.0%}",
            f"{p.client_cpu:.0%}",
            f"{p.others_cpu:.0%}",
            " + ".join(f"{m:,.0f}" for m in p.rss_mib))
    console.print(table)
    for p in phases:
        others = {k: v for k, v in p.events.items() if k != "message"}
        if others or p.dropped or p.errors:
            console.print(f"{p.processes} process(es), {p.mode} loop: other events {dict(others)}, "
                          f"{p.dropped} sockets dropped, errors {dict(p.error_kinds)}")
    noisy = [p for p in phases if p.others_cpu > NOISY]
    if noisy:
        console.print("[yellow]other processes took " + ", ".join(
            f"{p.others_cpu:.0%} in {p.processes}/{p.mode}" for p in noisy) + " of the machine (100% = one core): "
            "those phases measured the neighbours too; run again when the machine is quiet[/]")
    one = next((p for p in phases if p.processes == 1 and p.mode == "closed"), None)
    two = next((p for p in phases if p.processes == 2 and p.mode == "closed"), None)
    paced = next((p for p in phases if p.processes == 2 and p.mode == "open"), None)
    if one is not None and two is not None:
        ratio = two.rate / one.rate if one.rate else float("nan")
        verdict = "[green]met[/]" if ratio >= SCALE_BUDGET else "[red]missed[/]"
        console.print(f"two processes / one: {ratio:.2f}x (budget ≥ {SCALE_BUDGET}x: {verdict})")
    if paced is not None:
        p99 = _pct(paced.push_ms, .99)
        if not paced.held:
            verdict = f"[red]not judged: the servers did not take {args.rate:.0f}/s[/]"
        else:
            verdict = "[green]met[/]" if p99 < PUSH_P99_BUDGET_MS else "[red]missed[/]"
        console.print(f"push p99 across processes at {paced.rate:.0f} msg/s: {p99:.1f} ms "
                      f"(budget < {PUSH_P99_BUDGET_MS:.0f} ms at {args.rate:.0f}/s: {verdict})")
    console.print("push = the send started -> the other person's socket has the `message` event (with two processes "
                  "that socket is on the other process); push-ack = after the sender's 201. held = open loop sent at "
                  f"least {HELD:.0%} of the scheduled sends, at most {MAX_IN_FLIGHT} in flight (the rest skipped). "
                  "events/send = `message` events over every socket per send; expected = the thread's followers "
                  "(members, pool members, assignee; one socket each, the sender's own included). CPU: 100% = one "
                  "core; a server's CPU includes its writer process and emergency-check helpers; CPU ms/msg = "
                  "both servers' CPU per message sent; PG = every postgres process; others' = the "
                  "machine's busy time (/proc/stat) less all of these: whatever else ran meanwhile.")
    console.print(f"load average at start {args.load_at_start:.1f}; total {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per phase (600 for a 10-minute run)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200, help="messages/s in the paced phases")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--skip-single", action="store_true", help="only the two-process phases")
    parser.add_argument("--phases", default="closed,open", help="which loops to run, of closed,open")
    parser.add_argument("--py-spy", metavar="PATH", help="record each server with this py-spy during each phase "
                        "(raw folded stacks in the logs folder)")
    args = parser.parse_args()
    args.load_at_start = os.getloadavg()[0]
    if args.load_at_start > 0.5:
        console.print(f"[yellow]load average is {args.load_at_start:.1f} before starting: figures will be noisy[/]")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        sys.exit(f"bench/load.py needs Redis at {REDIS_URL} (LOCKBOX_TEST_REDIS)")
    # 1,000 sockets plus HTTP connections per client process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 65536)), hard))
    modes = [m for m in ("closed", "open") if m in args.phases.split(",")]
    started = time.monotonic()
    logs = Path(tempfile.gettempdir()) / f"lockbox-load-logs-{os.getpid()}"
    logs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lockbox-load-") as tmp, pg_database("load") as url:
        workdir = Path(tmp)
        settings = Settings(data_dir=workdir / "data", database_url=url, smtp_gateway_port=0)
        console.print(f"seeding {args.users} users")
        with seeded_database(settings) as db:
            clinic = seed_clinic(db, users=args.users)
        tokens = [p.token or "" for p in clinic.everyone]
        env = {"LOCKBOX_REDIS_URL": REDIS_URL, "LOCKBOX_REDIS_PREFIX": f"lockbox-load-{os.getpid()}"}
        a = ServerProcess.for_settings(settings, env=env, log_path=workdir / "a.log")
        b = ServerProcess.for_settings(settings, env=env, log_path=workdir / "b.log")
        a.start(timeout=120)
        settle(a)
        phases = []
        try:
            console.print(f"opening {len(clinic.patients)} threads")
            conversations = asyncio.run(open_conversations(a.base_url, clinic))
            describe(clinic, conversations)
            if not args.skip_single:
                for mode in modes:
                    console.print(f"one process, {mode} loop, {args.duration:.0f} s")
                    phases.append(run_phase([a], tokens, conversations, mode, args.duration, args.clients, args.rate,
                                            args.py_spy, logs))
            b.start(timeout=120)
            settle(b)
            for mode in modes:
                console.print(f"two processes, {mode} loop, {args.duration:.0f} s")
                phases.append(run_phase([a, b], tokens, conversations, mode, args.duration, args.clients, args.rate,
                                        args.py_spy, logs))
        finally:
            b.stop()
            a.stop()
            logs.mkdir(exist_ok=True)
            for log in (a.log_path, b.log_path):
                if log.exists():
                    shutil.copy(log, logs / log.name)
    report(phases, args, started)
    console.print(f"server logs: {logs}")


if __name__ == "__main__":
    main()
