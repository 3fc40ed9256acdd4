"""The commit is the acknowledgement: every reply answered 201 survives a SIGKILL of the real server."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from lockbox.config import Settings
from tests.factories import Person, make_pool, make_team, make_user
from tests.serverproc import ServerProcess, seeded_database

SENDERS = 16
PATIENTS = 4
LOAD_BEFORE_KILL_S = 1.5


@dataclass
class Acked:
    thread_id: str
    message_id: str
    seq: int
    body: str


@dataclass
class Tally:
    acked: list[Acked] = field(default_factory=list)
    lost_in_flight: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _auth(p: Person) -> dict[str, str]:
    return {"Authorization": f"Bearer {p.token}"}


def _sender(base_url: str, n: int, who: Person, thread_id: str, killed: threading.Event, tally: Tally) -> None:
    with httpx.Client(base_url=base_url, headers=_auth(who), timeout=10) as http:
        i = 0
        while not killed.is_set():
            i += 1
            body = f"sender {n} message {i}: the swelling is a little better today"
            try:
                r = http.post(f"/api/v1/threads/{thread_id}/messages", json={"body": body})
            except httpx.TransportError:
                # Sent, then the server died: never acknowledged, so either outcome is allowed.
                with tally.lock:
                    tally.lost_in_flight += 1
                killed.wait(15)
                return
            with tally.lock:
                if r.status_code == 201:
                    doc = r.json()
                    tally.acked.append(Acked(thread_id, doc["id"], doc["seq"], body))
                else:
                    tally.errors.append(f"{r.status_code} {r.text[:200]}")


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return
        if status == "Z":  # exited; its parent (init, the server being dead) reaps it
            return
        time.sleep(0.05)
    raise AssertionError(f"writer process {pid} outlived its server")


def _audit_verify(server: ServerProcess) -> None:
    if importlib.util.find_spec("lockbox.audit.cli") is None:
        return  # `lockbox audit verify` is not there yet
    run = subprocess.run([sys.executable, "-m", "lockbox.cli", "audit", "verify"], env=server.env(),
                         cwd=server.data_dir, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"audit verify failed after the crash:\n{run.stdout}\n{run.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("writer_process", ["true", "false"], ids=["writer-process", "writer-thread"])
def test_acknowledged_replies_survive_sigkill(settings: Settings, writer_process: str) -> None:
    with seeded_database(settings) as db:
        make_team(db, "team-a")
        nurse = make_user(db, "nurse", care_teams=["team-a"])
        make_pool(db, "nurse-triage", ["nurse"], members=[nurse])
        patients = [make_user(db, "patient", care_teams=["team-a"]) for _ in range(PATIENTS)]

    # Four senders per patient account go faster than any person can type: the rate limit would answer
    # 429, which is right for a person and beside the point here (what was acknowledged survives).
    server = ServerProcess.for_settings(settings, env={"LOCKBOX_RATE_LIMITS_ENABLED": "false",
                                                       "LOCKBOX_WRITER_PROCESS": writer_process})
    server.start()
    writer = server.writer_pid()
    assert (writer is not None) == (writer_process == "true")
    try:
        threads: list[str] = []
        for p in patients:
            r = httpx.post(server.base_url + "/api/v1/threads", headers=_auth(p), timeout=10,
                           json={"subject": "Swollen ankle", "body": "My ankle is swollen since Monday."})
            assert r.status_code == 201, r.text
            threads.append(r.json()["id"])

        # Patients and the triage nurse write into the same threads at once, so seq allocation races.
        killed = threading.Event()
        tally = Tally()
        workers = [
            threading.Thread(target=_sender, daemon=True, args=(
                server.base_url, n, patients[n % PATIENTS] if n % 2 == 0 else nurse, threads[n % PATIENTS],
                killed, tally))
            for n in range(SENDERS)
        ]
        for w in workers:
            w.start()
        time.sleep(LOAD_BEFORE_KILL_S)
        with tally.lock:
            acked_before_kill = len(tally.acked)
        assert server.proc is not None and server.proc.poll() is None, "the server died on its own"
        server.kill()
        killed.set()
        if writer is not None:
            # The server's writer ends with it: it commits what it was sent (unacknowledged) and exits.
            _wait_gone(writer)
        for w in workers:
            w.join(timeout=15)
        assert not any(w.is_alive() for w in workers)
        assert tally.errors == []
        assert acked_before_kill >= SENDERS, "too few messages were acknowledged to test anything"

        server.start()
        stored: dict[str, dict[str, tuple[int, str]]] = {}
        with httpx.Client(base_url=server.base_url, headers=_auth(nurse), timeout=30) as http:
            for tid in threads:
                r = http.get(f"/api/v1/threads/{tid}")
                assert r.status_code == 200, r.text
                doc = r.json()
                seqs = [m["seq"] for m in doc["messages"]]
                assert seqs == list(range(1, doc["message_count"] + 1)), "gaps or duplicates in a thread"
                stored[tid] = {m["id"]: (m["seq"], m["body"]) for m in doc["messages"]}
            missing = [a for a in tally.acked if stored[a.thread_id].get(a.message_id) != (a.seq, a.body)]
            # The server accepts work again on the same data, continuing each thread's numbering.
            r = http.post(f"/api/v1/threads/{threads[0]}/messages", json={"body": "Back after the restart."})
            assert r.status_code == 201 and r.json()["seq"] == len(stored[threads[0]]) + 1

        persisted = sum(body.startswith("sender ") for m in stored.values() for _, body in m.values())
        backend = settings.resolved_database_url.split(":", 1)[0].split("+")[0]
        print(f"\n[{backend}] acknowledged={len(tally.acked)} "
              f"in flight at kill={tally.lost_in_flight} persisted replies={persisted} "
              f"(committed but unacknowledged={persisted - len(tally.acked)}) missing={len(missing)}")
        assert missing == [], f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
        assert persisted >= len(tally.acked)
    finally:
        server.stop()
    _audit_verify(server)
