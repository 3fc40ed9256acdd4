"""Send throughput and latency of the real server against its own HTTP ceiling (ARCHITECTURE section 7).

Usage: .venv/bin/python bench/send.py [--backend sqlite|postgresql|both] [--duration 10] [--senders 8,64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The seeding factories and the server helper are the tests' own: one way to build a clinic.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

import httpx  # noqa: E402
from bench.common import children_cpu_seconds, cpu_seconds, pg_database  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from tests.factories import Person, make_pool, make_team, make_user  # noqa: E402
from tests.serverproc import ServerProcess, seeded_database  # noqa: E402

from lockbox.config import Settings  # noqa: E402

BUDGET = 0.30  # sends/s as a share of the ping ceiling, from the performance issue
CONCURRENCY = (8, 64)
PATIENTS = 16
NURSES = 4
WARMUP_S = 2
SEND_LIMIT = "2000/second;120000/minute"  # per account; the production default is 200/second

# Wide enough for the table when the output goes to a file or a pipe, not a terminal.
console = Console(width=None if sys.stdout.isatty() else 200)

# wrk's Lua: round-robin over (path, token) so consecutive requests hit different threads and senders;
# done() hands the figures back as one JSON line instead of wrk's human summary.
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
LUA_SEND = r"""
local targets = { TARGETS }
local n = 0
request = function()
  n = n + 1
  local t = targets[(n % #targets) + 1]
  return wrk.format("POST", t[1], {["Authorization"] = t[2], ["Content-Type"] = "application/json",
                                   ["X-Forwarded-For"] = t[3]},
    '{"body":"Thank you, the swelling in my ankle is going down (' .. n .. ')"}')
end
"""


@dataclass
class Run:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    server_cpu: float
    helpers_cpu: float  # the server's child processes: its writer process and emergency-check helpers
    wrk_cpu: float

    @property
    def rate(self) -> float:
        return (self.requests - self.errors) / self.seconds


@dataclass
class Row:
    backend: str
    senders: int
    ping: Run
    send: Run
    stored: int


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        console.print("[yellow]wrk not found: installing it with apt-get[/]")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, **quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], check=False, **quiet)
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, **quiet)
        found = shutil.which("wrk")
    if not found:
        sys.exit("bench/send.py needs wrk (Debian: apt-get install wrk)")
    return found


def run_wrk(wrk: str, server: ServerProcess, path: str, script: Path, connections: int, seconds: int) -> Run:
    before_server = cpu_seconds(server.pid)
    before_helpers = children_cpu_seconds(server.pid)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # One wrk thread: with 2 cores the generator must leave the server a core of its own.
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
         server.base_url + path],
        check=True, capture_output=True, text=True,
    ).stdout
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = cpu_seconds(server.pid) - before_server
    helpers_cpu = children_cpu_seconds(server.pid) - before_helpers
    wrk_cpu = (after_children.ru_utime - before_children.ru_utime) + (after_children.ru_stime
                                                                       - before_children.ru_stime)
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    doc = json.loads(line.removeprefix("BENCH_JSON "))
    elapsed = doc["duration_us"] / 1e6
    errors = doc["connect"] + doc["read"] + doc["write"] + doc["status"] + doc["timeout"]
    return Run(doc["requests"], elapsed, errors, doc["p50_us"] / 1000, doc["p99_us"] / 1000,
               server_cpu / elapsed, helpers_cpu / elapsed, wrk_cpu / elapsed)


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'data' / 'lockbox.db'}"
        return
    with pg_database("bench") as url:
        yield url


def seed(settings: Settings) -> tuple[list[Person], list[Person]]:
    """A care team with its triage nurses and a doctor, and patients who will each open a thread."""
    with seeded_database(settings) as db:
        make_team(db, "team-a")
        doctor = make_user(db, "physician", care_teams=["team-a"])
        nurses = [make_user(db, "nurse", care_teams=["team-a"]) for _ in range(NURSES)]
        make_pool(db, "nurse-triage", ["nurse"], members=nurses)
        patients = [make_user(db, "patient", care_teams=["team-a"], pcp=doctor) for _ in range(PATIENTS)]
    return patients, nurses


def stored_replies(server: ServerProcess, nurse: Person) -> int:
    r = httpx.get(server.base_url + "/api/v1/threads", headers={"Authorization": f"Bearer {nurse.token}"},
                  timeout=30)
    r.raise_for_status()
    return sum(t["message_count"] - 1 for t in r.json())


def bench_backend(backend: str, wrk: str, seconds: int, senders: tuple[int, ...] = CONCURRENCY) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix=f"lockbox-bench-{backend}-") as tmp:
        workdir = Path(tmp)
        with database(backend, workdir) as url:
            settings = Settings(data_dir=workdir / "data", database_url=url, smtp_gateway_port=0)
            patients, nurses = seed(settings)
            # Production mode wants TLS or a trusted proxy: wrk stands where the proxy would (loopback).
            # Each of the 4 nurses answers 4 threads: past 1,600 msg/s a nurse would send more than the
            # production limit of 200 a second. Limits stay on (their cost is part of a send), only higher.
            server = ServerProcess.for_settings(settings, env={"LOCKBOX_ENV": "production",
                                                               "LOCKBOX_PROXY_HEADERS": "true",
                                                               "LOCKBOX_TRUSTED_PROXIES": "127.0.0.1",
                                                               "LOCKBOX_RATE_SEND_ACCOUNT": SEND_LIMIT,
                                                               # To compare settings: the bench's own LOCKBOX_*.
                                                               **{k: v for k, v in os.environ.items()
                                                                  if k.startswith("LOCKBOX_")
                                                                  and k not in ("LOCKBOX_TEST_PG",)}})
            server.start()
            try:
                return _measure(backend, wrk, seconds, server, workdir, patients, nurses, senders)
            finally:
                server.stop()


def _measure(backend: str, wrk: str, seconds: int, server: ServerProcess, workdir: Path,
             patients: list[Person], nurses: list[Person], senders: tuple[int, ...]) -> list[Row]:
    targets = []
    for i, patient in enumerate(patients):
        r = httpx.post(server.base_url + "/api/v1/threads", timeout=30,
                       headers={"Authorization": f"Bearer {patient.token}"},
                       json={"subject": "Swollen ankle", "body": "My ankle has been swollen since Monday."})
        r.raise_for_status()
        path = f"/api/v1/threads/{r.json()['id']}/messages"
        # Each thread gets its patient and one of the triage nurses, as a real conversation would; each
        # sender has an address of their own behind the proxy wrk stands for (documentation range, never
        # contacted), so the per-address send limit applies per person as in a clinic, not to all at once.
        targets += [(path, f"Bearer {patient.token}", f"192.0.2.{2 * i + 1}"),
                    (path, f"Bearer {nurses[i % NURSES].token}", f"192.0.2.{2 * i + 2}")]
    ping_lua = workdir / "ping.lua"
    ping_lua.write_text(LUA_DONE)
    send_lua = workdir / "send.lua"
    lua_targets = ", ".join(f'{{"{p}", "{a}", "{x}"}}' for p, a, x in targets)
    send_lua.write_text(LUA_SEND.replace("TARGETS", lua_targets) + LUA_DONE)

    console.print(f"[bold]{backend}[/]: warming up")
    run_wrk(wrk, server, "/api/v1/ping", ping_lua, max(senders), WARMUP_S)
    run_wrk(wrk, server, "/", send_lua, max(senders), WARMUP_S)
    rows = []
    for c in senders:
        console.print(f"[bold]{backend}[/]: {c} connections, ping then send, {seconds} s each")
        ping = run_wrk(wrk, server, "/api/v1/ping", ping_lua, c, seconds)
        before = stored_replies(server, nurses[0])
        send = run_wrk(wrk, server, "/", send_lua, c, seconds)
        stored = stored_replies(server, nurses[0]) - before
        rows.append(Row(backend, c, ping, send, stored))
    return rows


def report(rows: list[Row], seconds: int) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    table = Table(title=f"POST /threads/{{id}}/messages vs GET /ping — {os.cpu_count()} cores ({cpu}), "
                        f"{seconds} s per run, one uvicorn worker, wrk -t1")
    for col in ("backend", "senders", "ping req/s", "send msg/s", "p50 ms", "p99 ms", "send/ceiling",
                f"budget ≥{BUDGET:.0%}", "errors", "stored", "server CPU", "helpers CPU", "wrk CPU",
                "server ms/msg", "server ms/ping"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    # The ceiling is the best the bare stack did on that server, whatever the concurrency.
    ceiling = {b: max(r.ping.rate for r in rows if r.backend == b) for b in {r.backend for r in rows}}
    for r in rows:
        ratio = r.send.rate / ceiling[r.backend]
        ok = "[green]met[/]" if ratio >= BUDGET else "[red]missed[/]"
        acked = r.send.requests - r.send.errors
        stored = f"{r.stored}" if r.stored >= acked else f"[red]{r.stored} < {acked}[/]"
        table.add_row(r.backend, str(r.senders), f"{r.ping.rate:,.0f}", f"{r.send.rate:,.0f}",
                      f"{r.send.p50_ms:.1f}", f"{r.send.p99_ms:.1f}", f"{ratio:.0%}", ok,
                      str(r.send.errors + r.ping.errors), stored, f"{r.send.server_cpu:.0%}",
                      f"{r.send.helpers_cpu:.0%}", f"{r.send.wrk_cpu:.0%}",
                      f"{1000 * r.send.server_cpu / r.send.rate:.2f}", f"{1000 * r.ping.server_cpu / r.ping.rate:.3f}")
    console.print(table)
    console.print("ceiling = the best GET /api/v1/ping rate of that server; CPU is per core during the send run "
                  "(100% = one core; helpers = the server's writer process and emergency-check helpers); "
                  "stored = replies found afterwards (must be ≥ the 201s); ms/msg and ms/ping = the server's CPU "
                  "per request, steadier than rates on a shared machine when comparing two versions.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--senders", default=",".join(map(str, CONCURRENCY)),
                        help="concurrent senders of each run, comma-separated")
    args = parser.parse_args()
    wrk = ensure_wrk()
    load = os.getloadavg()[0]
    if load > 0.5:
        # Server and generator share the cores: anything else running skews every figure.
        console.print(f"[yellow]load average is {load:.1f} before starting: figures will be noisy[/]")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    started = time.monotonic()
    senders = tuple(int(n) for n in args.senders.split(","))
    rows = [row for b in backends for row in bench_backend(b, wrk, args.duration, senders)]
    report(rows, args.duration)
    console.print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
