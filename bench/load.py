"""Load with 1,000 simulated users on one and on two server processes (PostgreSQL + Redis, issue 7).

Usage: .venv/bin/python bench/load.py [--duration 15] [--users 1000] [--rate 200] [--clients 2]

Every user holds a WebSocket; 80% are patients, each with one thread with a nurse. Four phases:
one process then two, each as fast as the senders can go (closed loop) and at a fixed rate (open
loop). With two processes every thread's two people are on different processes and each sends
through the process the other is not on, so every push measured crossed Redis.
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
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

import httpx  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402
from tests.factories import make_team  # noqa: E402
from tests.serverproc import ServerProcess, seeded_database  # noqa: E402
from websockets.asyncio.client import ClientConnection  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

from lockbox.config import Settings  # noqa: E402
from lockbox.db import runtime_of  # noqa: E402
from lockbox.identity import credentials, sessions  # noqa: E402
from lockbox.identity.models import Patient, User  # noqa: E402

PG_ADMIN_DSN = os.environ.get("LOCKBOX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LOCKBOX_TEST_REDIS", "redis://127.0.0.1:6379/0")
SCALE_BUDGET = 1.6  # two processes deliver at least 1.6x one
PUSH_P99_BUDGET_MS = 100.0
CONCURRENCY = 64  # senders in flight in the closed-loop phases, over all client processes
TEAMS = 10

console = Console(width=None if sys.stdout.isatty() else 170)


# -- the clinic ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """A thread and its two people: index 0 the patient, 1 the nurse."""

    thread_id: str
    tokens: tuple[str, str]


def seed(settings: Settings, users: int) -> list[tuple[str, str, str, str]]:
    """``users`` accounts with sessions: 80% patients and 20% nurses over ten care teams.
    Returns (patient token, nurse token, nurse username, patient username) per patient."""
    nurses_n = max(1, users // 5)
    patients_n = users - nurses_n
    with seeded_database(settings) as db:
        for t in range(TEAMS):
            make_team(db, f"team-{t}")
        pw = credentials.hash_password("plum-kettle-arbor-92-quietly")

        def _people(session: Session) -> list[tuple[str, str, str, str]]:
            from lockbox.consent.models import ConsentRecord
            from lockbox.directory.models import CareTeamMember

            rt = runtime_of(session)
            now = rt.clock.now()
            secret = credentials.new_totp_secret()

            def user(username: str, role: str) -> tuple[User, str]:
                u = User(username=username, display_name=username.title(), role=role, password_hash=pw,
                         created_at=now, enrolled_at=now)
                session.add(u)
                session.flush()
                u.totp_secret_sealed = credentials.seal_totp_secret(rt.keyring, u.id, secret)
                token, _ = sessions.create_session(session, user=u, device="bench", client_addr="127.0.0.1")
                return u, token

            nurses = []
            for i in range(nurses_n):
                u, token = user(f"load.nurse{i}", "nurse")
                session.add(CareTeamMember(care_team_id=f"team-{i % TEAMS}", user_id=u.id))
                nurses.append((u.username, token))
            out = []
            for i in range(patients_n):
                u, token = user(f"load.patient{i}", "patient")
                team = f"team-{i % TEAMS}"
                session.add(Patient(user_id=u.id, mrn=f"L{i:07d}", birth_date=date(1980, 1, 1 + i % 28),
                                    care_team_id=team))
                session.add(ConsentRecord(patient_id=u.id, status="granted", terms_version="2026-01",
                                          method="directory", recorded_at=now))
                # A nurse of the patient's own team (nurse j is on team j % TEAMS).
                per_team = nurses_n // TEAMS
                j = i % TEAMS + TEAMS * ((i // TEAMS) % per_team) if per_team else i % nurses_n
                nurse_name, nurse_token = nurses[j]
                out.append((token, nurse_token, nurse_name, u.username))
            return out

        return db.write_sync(_people)


async def open_threads(base_url: str, people: list[tuple[str, str, str, str]]) -> list[Pair]:
    """Each nurse writes to each of their patients: one thread per patient, both of them members."""
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=base_url + "/api/v1", limits=limits, timeout=60) as client:
        sem = asyncio.Semaphore(16)

        async def one(patient_token: str, nurse_token: str, nurse_name: str, patient_name: str) -> Pair:
            async with sem:
                r = await client.post("/threads", headers={"Authorization": f"Bearer {nurse_token}"},
                                      json={"subject": "Follow-up", "body": "How are you feeling today?",
                                            "patient": patient_name, "confirm_recipients": True})
                r.raise_for_status()
                return Pair(r.json()["id"], (patient_token, nurse_token))

        return list(await asyncio.gather(*(one(*p) for p in people)))


# -- one client process -------------------------------------------------------------------------------------

@dataclass
class Plan:
    pairs: list[Pair]
    # Server URL per (pair index, person): where that person's socket lives and where they send.
    socket_on: list[tuple[str, str]]
    send_via: list[tuple[str, str]]
    mode: str  # "closed" or "open"
    seconds: float
    concurrency: int  # closed loop: senders in flight in this process
    rate: float  # open loop: sends per second from this process


@dataclass
class Outcome:
    sent: int = 0
    errors: int = 0
    throttled: int = 0
    send_ms: list[float] = field(default_factory=list)
    push_ms: list[float] = field(default_factory=list)  # send started -> the other person's socket has it
    push_after_ack_ms: list[float] = field(default_factory=list)
    missing: int = 0  # acknowledged sends whose event never reached the other person
    seconds: float = 0.0
    cpu_s: float = 0.0
    sockets: int = 0
    events: int = 0  # message events received, on every socket
    dropped: int = 0  # sockets the server closed during the phase


async def _listen(ws: ClientConnection, arrived: dict[str, float], out: Outcome) -> None:
    try:
        async for raw in ws:
            event = json.loads(raw)
            if event.get("type") == "message" and "message_id" in event:
                out.events += 1
                arrived.setdefault(event["message_id"], time.monotonic())
    except asyncio.CancelledError:
        raise
    except Exception:
        pass
    out.dropped += 1


async def _client_main(plan: Plan) -> Outcome:
    out = Outcome()
    # Events per receiving person: (pair index, person) -> message id -> arrival.
    arrived: dict[tuple[int, int], dict[str, float]] = {}
    sockets = []
    listeners = []
    for i, pair in enumerate(plan.pairs):
        for who in (0, 1):
            url = plan.socket_on[i][who].replace("http://", "ws://") + "/api/v1/events"
            ws = await ws_connect(url, additional_headers={"Authorization": f"Bearer {pair.tokens[who]}"},
                                  max_queue=None, compression=None, proxy=None, ping_interval=None)
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready", ready
            box: dict[str, float] = {}
            arrived[(i, who)] = box
            sockets.append(ws)
            listeners.append(asyncio.create_task(_listen(ws, box, out)))
    out.sockets = len(sockets)
    clients = {url: httpx.AsyncClient(base_url=url + "/api/v1", timeout=30,
                                      limits=httpx.Limits(max_connections=max(plan.concurrency, 32)))
               for row in plan.send_via for url in row}
    sends: list[tuple[int, int, str, float, float]] = []  # pair, sender, message id, started, acked

    async def send(i: int, who: int, n: int) -> None:
        pair = plan.pairs[i]
        started = time.monotonic()
        try:
            r = await clients[plan.send_via[i][who]].post(
                f"/threads/{pair.thread_id}/messages", headers={"Authorization": f"Bearer {pair.tokens[who]}"},
                json={"body": f"Thanks, the swelling in my ankle is going down ({n})"})
        except httpx.HTTPError:
            out.errors += 1
            return
        acked = time.monotonic()
        if r.status_code != 201:
            out.errors += 1
            out.throttled += r.status_code == 429
            return
        out.sent += 1
        out.send_ms.append((acked - started) * 1000)
        sends.append((i, who, r.json()["id"], started, acked))

    rng = random.Random(os.getpid())
    t0_cpu = time.process_time()
    started = time.monotonic()
    deadline = started + plan.seconds
    counter = 0
    if plan.mode == "closed":
        async def sender() -> None:
            nonlocal counter
            while time.monotonic() < deadline:
                counter += 1
                await send(rng.randrange(len(plan.pairs)), counter % 2, counter)

        await asyncio.gather(*(sender() for _ in range(plan.concurrency)))
        print(f"client {os.getpid()}: {out.events} events, {out.dropped} sockets dropped", flush=True)
    else:
        tasks = set()
        interval = 1.0 / plan.rate
        next_at = started
        while next_at < deadline:
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            counter += 1
            task = asyncio.create_task(send(rng.randrange(len(plan.pairs)), counter % 2, counter))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
        if tasks:
            await asyncio.gather(*tasks)
    out.seconds = time.monotonic() - started
    await asyncio.sleep(1.0)  # late events
    out.cpu_s = time.process_time() - t0_cpu
    for i, who, message_id, sent_at, acked_at in sends:
        at = arrived[(i, 1 - who)].get(message_id)
        if at is None:
            out.missing += 1
            continue
        out.push_ms.append((at - sent_at) * 1000)
        out.push_after_ack_ms.append((at - acked_at) * 1000)
    for task in listeners:
        task.cancel()
    for ws in sockets:
        await ws.close()
    for c in clients.values():
        await c.aclose()
    return out


def _client_process(plan: Plan, conn: Any) -> None:
    conn.send(asyncio.run(_client_main(plan)))
    conn.close()


# -- servers and phases -------------------------------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Phase:
    processes: int
    mode: str
    result: Outcome
    server_cpu: list[float]
    rss_mib: list[float]

    @property
    def rate(self) -> float:
        return self.result.sent / self.result.seconds if self.result.seconds else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_phase(servers: list[ServerProcess], pairs: list[Pair], mode: str, seconds: float, clients: int,
              rate: float) -> Phase:
    urls = [s.base_url for s in servers]
    plans = []
    for c in range(clients):
        mine = pairs[c::clients]
        if len(urls) == 1:
            socket_on = [(urls[0], urls[0])] * len(mine)
            send_via = socket_on
        else:
            # Patient's socket on one process, the nurse's on the other; each sends through the process
            # the other person is not on, so every push crosses processes.
            socket_on = [(urls[i % 2], urls[1 - i % 2]) for i in range(len(mine))]
            send_via = [(b, a) for a, b in socket_on]
        plans.append(Plan(mine, socket_on, send_via, mode, seconds, max(1, CONCURRENCY // clients),
                          rate / clients))
    before = [_cpu_seconds(s.pid) for s in servers]
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for plan in plans:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client_process, args=(plan, child))
        p.start()
        pipes.append(parent)
        procs.append(p)
    results: list[Outcome] = [pipe.recv() for pipe in pipes]
    for p in procs:
        p.join()
    total = Outcome()
    for r in results:
        total.sent += r.sent
        total.errors += r.errors
        total.throttled += r.throttled
        total.send_ms += r.send_ms
        total.push_ms += r.push_ms
        total.push_after_ack_ms += r.push_after_ack_ms
        total.missing += r.missing
        total.cpu_s += r.cpu_s
        total.sockets += r.sockets
        total.events += r.events
        total.dropped += r.dropped
    # Sockets connect before the clock starts, so elapsed server CPU is slightly over-counted.
    total.seconds = max(r.seconds for r in results)
    cpu = [(_cpu_seconds(s.pid) - b) / (total.seconds + 1.0) for s, b in zip(servers, before, strict=True)]
    return Phase(len(servers), mode, total, cpu, [_rss_mib(s.pid) for s in servers])


def settle(server: ServerProcess, limit_s: float = 90.0) -> None:
    """Wait for a fresh server's start-up work (it trains the triage model in the background) to end,
    so it is not measured as load."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = _cpu_seconds(server.pid)
        time.sleep(1.0)
        if _cpu_seconds(server.pid) - before < 0.1:
            return


@contextmanager
def database(workdir: Path) -> Iterator[str]:
    name = f"lockbox_load_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].split("://", 1)[1]
    try:
        yield f"postgresql+psycopg://{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(phases: list[Phase], args: argparse.Namespace, started: float) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    table = Table(title=f"bench/load.py — {args.users} users with a WebSocket each, {os.cpu_count()} cores ({cpu}), "
                        f"PostgreSQL + Redis, {args.duration:.0f} s per phase, {args.clients} client processes")
    for col in ("processes", "load", "msg/s", "send p50 ms", "send p99 ms", "push p50 ms", "push p99 ms",
                "push-ack p99 ms", "missing", "errors (429)", "events/send", "server CPU", "RSS MiB", "client CPU"):
        table.add_column(col, justify="right")
    for p in phases:
        r = p.result
        table.add_row(
            str(p.processes), "max" if p.mode == "closed" else f"{args.rate:.0f}/s", f"{p.rate:,.0f}",
            f"{_pct(r.send_ms, .5):.1f}", f"{_pct(r.send_ms, .99):.1f}", f"{_pct(r.push_ms, .5):.1f}",
            f"{_pct(r.push_ms, .99):.1f}", f"{_pct(r.push_after_ack_ms, .99):.1f}", str(r.missing),
            f"{r.errors} ({r.throttled})", f"{r.events / r.sent if r.sent else 0:.1f}",
            " + ".join(f"{c:.0%}" for c in p.server_cpu),
            " + ".join(f"{m:.0f}" for m in p.rss_mib), f"{r.cpu_s / (r.seconds + 1.0):.0%}")
    console.print(table)
    one = next((p for p in phases if p.processes == 1 and p.mode == "closed"), None)
    two = next((p for p in phases if p.processes == 2 and p.mode == "closed"), None)
    paced = next((p for p in phases if p.processes == 2 and p.mode == "open"), None)
    if one is not None and two is not None:
        ratio = two.rate / one.rate if one.rate else float("nan")
        verdict = "[green]met[/]" if ratio >= SCALE_BUDGET else "[red]missed[/]"
        console.print(f"two processes / one: {ratio:.2f}x (budget ≥ {SCALE_BUDGET}x: {verdict})")
    if paced is not None:
        p99 = _pct(paced.result.push_ms, .99)
        verdict = "[green]met[/]" if p99 < PUSH_P99_BUDGET_MS else "[red]missed[/]"
        console.print(f"push p99 across processes at {paced.rate:.0f} msg/s: {p99:.1f} ms "
                      f"(budget < {PUSH_P99_BUDGET_MS:.0f} ms: {verdict})")
    console.print("push = the send started -> the other person's socket on the other process has the event; "
                  "push-ack = after the sender's 201. CPU per core (100% = one core); client CPU is the sum "
                  "over client processes. RSS at the end of the phase.")
    console.print("events/send = message events over all sockets per send: every follower hears on each of their "
                  "sockets (a nurse holds one per patient here), and once a patient has replied, routing finds no "
                  "pool in this directory and brings the care team in (about 20 nurses), so it is far above 2.")
    console.print(f"load average at start {args.load_at_start:.1f}; total {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15, help="seconds per phase (600 for a 10-minute run)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200, help="messages/s in the paced phases")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--skip-single", action="store_true", help="only the two-process phases")
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
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lockbox-load-") as tmp, database(Path(tmp)) as url:
        workdir = Path(tmp)
        data_dir = workdir / "data"
        settings = Settings(data_dir=data_dir, database_url=url, smtp_gateway_port=0)
        console.print(f"seeding {args.users} users")
        people = seed(settings, args.users)
        env = {"LOCKBOX_REDIS_URL": REDIS_URL, "LOCKBOX_REDIS_PREFIX": f"lockbox-load-{os.getpid()}"}
        a = ServerProcess.for_settings(settings, env=env, log_path=workdir / "a.log")
        b = ServerProcess.for_settings(settings, env=env, log_path=workdir / "b.log")
        a.start(timeout=120)
        settle(a)
        phases = []
        try:
            console.print(f"opening {len(people)} threads")
            pairs = asyncio.run(open_threads(a.base_url, people))
            if not args.skip_single:
                for mode in ("closed", "open"):
                    console.print(f"one process, {mode} loop, {args.duration:.0f} s")
                    phases.append(run_phase([a], pairs, mode, args.duration, args.clients, args.rate))
            b.start(timeout=120)
            settle(b)
            for mode in ("closed", "open"):
                console.print(f"two processes, {mode} loop, {args.duration:.0f} s")
                phases.append(run_phase([a, b], pairs, mode, args.duration, args.clients, args.rate))
        finally:
            b.stop()
            a.stop()
            logs = Path(tempfile.gettempdir()) / f"lockbox-load-logs-{os.getpid()}"
            logs.mkdir(exist_ok=True)
            for log in (a.log_path, b.log_path):
                if log.exists():
                    shutil.copy(log, logs / log.name)
    report(phases, args, started)
    console.print(f"server logs: {logs}")


if __name__ == "__main__":
    main()
