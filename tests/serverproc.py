"""A real ``lockbox serve`` in a subprocess on a given data dir and database, for crash tests and benchmarks.

Seed the database first (``seeded_database``), close it, then start the server on the same data dir:
the key file lives there and the server must use the same one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx

from lockbox.app import build_database
from lockbox.config import Settings
from lockbox.db import Database

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


@contextmanager
def seeded_database(settings: Settings) -> Iterator[Database]:
    """The database a server will run on, with the system clock (the server's), closed on exit."""
    db = build_database(settings)
    try:
        db.migrate()
        yield db
    finally:
        db.close()


class _Child:
    """A ``lockbox`` subprocess writing to a log file: its tail for errors, SIGTERM to stop, SIGKILL to crash."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, exactly like a crash or the OOM killer."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class ServerProcess(_Child):
    """``lockbox serve`` on 127.0.0.1 and a free port; ``kill()`` is SIGKILL, ``start()`` may be called again."""

    def __init__(self, data_dir: Path, database_url: str, *, port: int | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.port = port or free_port()
        self.extra_env = env or {}
        self.log_path = log_path or data_dir.parent / f"lockbox-serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: object) -> ServerProcess:
        return cls(settings.data_dir, settings.resolved_database_url, **kwargs)  # type: ignore[arg-type]

    def writer_pid(self) -> int | None:
        """The server's writer process (lockbox.db.writer_process), if it runs one."""
        for pid in children(self.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"from lockbox.db.writer_process import main" in cmdline:
                return pid
        return None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def env(self) -> dict[str, str]:
        # The caller's own LOCKBOX_* settings must not leak into the server under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKBOX_")}
        env.update({
            "LOCKBOX_ENV": "test",
            "LOCKBOX_DATA_DIR": str(self.data_dir),
            "LOCKBOX_DATABASE_URL": self.database_url,
            "LOCKBOX_SMTP_GATEWAY_PORT": "0",
            # The real clock here: the server commits in its writer process, as in production.
            "LOCKBOX_WRITER_PROCESS": "true",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lockbox.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                # The data dir as cwd: a lockbox.toml in the caller's directory must not apply.
                cwd=self.data_dir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"lockbox serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                # Ready as a load balancer means it: migrated, keys readable, triage warm (a patient's
                # first message no longer waits seconds for the engine; under a loaded suite it timed out).
                if httpx.get(self.base_url + "/api/v1/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"lockbox serve not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class WorkerProcess(_Child):
    """``lockbox worker`` in a subprocess on the same data dir and database as the servers."""

    def __init__(self, data_dir: Path, database_url: str, *, env: dict[str, str] | None = None,
                 log_path: Path | None = None, count: int = 1, poll: float = 0.2,
                 preload: str | None = None) -> None:
        # ``preload``: a module imported before the CLI runs (tests register their own job kinds there).
        self.preload = preload
        self.data_dir = data_dir
        self.database_url = database_url
        self.extra_env = env or {}
        self.count = count
        self.poll = poll
        self.log_path = log_path or data_dir.parent / f"lockbox-worker-{id(self):x}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKBOX_")}
        env.update({"LOCKBOX_ENV": "test", "LOCKBOX_DATA_DIR": str(self.data_dir),
                    "LOCKBOX_DATABASE_URL": self.database_url, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)})
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", f"import {self.preload or 'lockbox'}; from lockbox.cli import main; main()",
                 "worker", "--count", str(self.count), "--poll", str(self.poll)],
                cwd=self.data_dir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lockbox worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "running" in self.log_tail(5):  # printed once its workers have started
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"lockbox worker not ready after {timeout:.0f} s:\n{self.log_tail()}")


class RedisServer:
    """A private ``redis-server`` on a free port (no persistence), for tests that stop and restart Redis."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
