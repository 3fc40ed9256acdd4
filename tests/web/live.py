"""A real server for the browser: uvicorn in a thread on 127.0.0.1, in-process so tests seed through the
very Database it serves and can move its clock."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from lockbox.app import create_app
from lockbox.config import Settings
from lockbox.db import Database
from tests.serverproc import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"


class ShiftClock:
    """The real time plus an offset a test moves forward: sessions age without the test sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.offset += timedelta(seconds=seconds)


class LiveServer:
    def __init__(self, app: FastAPI, clock: ShiftClock) -> None:
        self.app = app
        self.clock = clock
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, ws="auto"))
        self.thread = threading.Thread(target=self.server.run, name="live-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Database:
        return self.app.state.lockbox.db  # type: ignore[no-any-return]

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def live_server(data_dir: Path, **settings: object) -> Iterator[LiveServer]:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    clock = ShiftClock()
    app = create_app(Settings(env="test", data_dir=data_dir, smtp_gateway_port=0, **settings),  # type: ignore[arg-type]
                     clock=clock)
    server = LiveServer(app, clock)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def require_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    reason = f"{CHROMIUM} is missing: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests are required)")
    pytest.skip(reason)
