"""The worker loop: claim due jobs, run each in its own unit of work, retry failures with back-off.

``lockbox serve`` runs one in-process; ``lockbox worker`` runs them as separate processes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from lockbox.db import Database
from lockbox.jobs import service
from lockbox.jobs.service import Claimed

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, db: Database, *, name: str | None = None, poll_s: float = 1.0, batch: int = 10) -> None:
        self.db = db
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:64]
        self.poll_s = poll_s
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        service.load_handlers()
        service.on_enqueue(self._wake.set)

    def run_once(self) -> int:
        """Claim and run one batch of due jobs; returns how many ran (succeeded or not)."""
        kinds = list(service._handlers)
        jobs = self.db.write_sync(service.claim, worker=self.name, limit=self.batch, kinds=kinds)
        for job in jobs:
            self._run(job)
        return len(jobs)

    def _run(self, job: Claimed) -> None:
        handler = service.handler_for(job.kind)
        if handler is None:  # claimed only kinds we know; a handler unregistered since is a retry later
            self.db.write_sync(service.fail, job_id=job.id, worker=self.name, error="no handler")
            return
        try:
            if handler.external:
                handler.run(job.payload, db=self.db)
                self.db.write_sync(service.finish, job_id=job.id, worker=self.name)
            else:
                self.db.write_sync(service.run_job, job_id=job.id, kind=job.kind, payload=job.payload,
                                   worker=self.name)
        except Exception as exc:
            # The type only: an exception's message may quote data.
            log.warning("job %s (%s) failed: %s", job.id, job.kind, type(exc).__name__)
            self.db.write_sync(service.fail, job_id=job.id, worker=self.name, error=type(exc).__name__)

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception as exc:
                log.error("worker batch failed: %s", type(exc).__name__)
                ran = 0
            if ran < self.batch:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop, name="lockbox-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        service.off_enqueue(self._wake.set)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
