"""Prometheus metrics: requests by route template and status, send latency, job queue depth, SLA
breaches and failed sign-ins. Labels are route templates, methods, statuses and job kinds: never a
filled-in path, an id or anything a person typed.

Each process keeps its own registry and is scraped on its own port (no multiprocess mode needed:
Lockbox runs one event loop per process). Queue depth, SLA breaches and failed sign-ins are read from
the database at scrape time, so they describe the whole deployment: aggregate them with max(), not sum().
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockbox.audit.models import AuditRow
from lockbox.db import Database
from lockbox.jobs.models import Job

log = logging.getLogger(__name__)

# The routes that send a message: their latency is the product's heartbeat.
SEND_ROUTES = frozenset({("POST", "/api/v1/threads"), ("POST", "/api/v1/threads/{thread_id}/messages"),
                         ("POST", "/api/v1/threads/{thread_id}/attachments")})
FAILED_LOGIN = "identity.login.failure"
SLA_BREACH = "routing.thread.escalate"


class _DatabaseCollector(Collector):
    """Reads queue depth and the audit log's new failed sign-ins and escalations at each scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._after_seq: int | None = None
        self._counts = {FAILED_LOGIN: 0, SLA_BREACH: 0}

    def start(self) -> None:
        """Count from now on: a counter starts at zero with its process, as Prometheus expects."""
        try:
            self._after_seq = self.db.read_sync(_head_seq)
        except Exception as exc:
            log.warning("metrics could not read the audit head: %s", type(exc).__name__)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        queued, dead, tail = self.db.read_sync(_scrape, after_seq=self._after_seq)
        depth = GaugeMetricFamily("lockbox_job_queue_depth", "Jobs waiting or running, by kind.", labels=["kind"])
        for kind, n in sorted(queued.items()):
            depth.add_metric([kind], n)
        yield depth
        dead_letters = GaugeMetricFamily("lockbox_job_dead_letters", "Jobs that failed for good, by kind.",
                                         labels=["kind"])
        for kind, n in sorted(dead.items()):
            dead_letters.add_metric([kind], n)
        yield dead_letters
        with self._lock:
            last_seq, counts = tail
            if self._after_seq is None or last_seq > self._after_seq:
                if self._after_seq is not None:
                    for action, n in counts.items():
                        self._counts[action] += n
                self._after_seq = last_seq
            failed, breaches = self._counts[FAILED_LOGIN], self._counts[SLA_BREACH]
        yield CounterMetricFamily("lockbox_failed_logins", "Failed sign-ins (audit log) since this process started.",
                                  value=failed)
        yield CounterMetricFamily("lockbox_sla_breaches", "Threads escalated for a missed response SLA since "
                                  "this process started.", value=breaches)


def _head_seq(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.max(AuditRow.seq), 0))) or 0)


def _scrape(session: Session, *, after_seq: int | None
            ) -> tuple[dict[str, int], dict[str, int], tuple[int, dict[str, int]]]:
    pending = Job.done_at.is_(None)
    rows = session.execute(select(Job.kind, Job.failed_at.is_(None), func.count())
                           .where(pending).group_by(Job.kind, Job.failed_at.is_(None))).all()
    queued = {kind: int(n) for kind, live, n in rows if live}
    dead = {kind: int(n) for kind, live, n in rows if not live}
    head = _head_seq(session)
    counts: dict[str, int] = {}
    if after_seq is not None and head > after_seq:
        # A range scan on the primary key: only the rows written since the last scrape.
        counts = {action: int(n) for action, n in session.execute(
            select(AuditRow.action, func.count())
            .where(AuditRow.seq > after_seq, AuditRow.seq <= head, AuditRow.action.in_([FAILED_LOGIN, SLA_BREACH]))
            .group_by(AuditRow.action))}
    return queued, dead, (head, counts)


class Metrics:
    """One per app: its own registry, so several apps in one process (tests) never share counters."""

    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("lockbox_http_requests", "HTTP requests by route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.send_latency = Histogram(
            "lockbox_send_latency_seconds", "Time to acknowledge a sent message (committed), by route template.",
            ["route"], registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.database = _DatabaseCollector(db)
        self.registry.register(self.database)


def route_template(scope: Scope) -> str:
    """The matched route's template, or a fixed word: never the path itself (it can name a patient)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str) or not template:
        return "unmatched"
    # FastAPI keeps an included router's routes relative to its prefix; the prefix (literal, as every
    # prefix here is) is the part of the real path in front of the template's own segments.
    path = scope.get("path", "")
    if ":path}" not in template and not path.startswith(template.split("{", 1)[0]):
        depth = template.rstrip("/").count("/")
        parts = path.rstrip("/").split("/")
        if len(parts) - 1 > depth:
            template = "/".join(parts[: len(parts) - depth]) + template
    return template


class MetricsMiddleware:
    """Pure ASGI, like SecurityHeaders: counts every HTTP response by its route template."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope.get("method", "GET")
            route = route_template(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            if (method, route) in SEND_ROUTES:
                self.metrics.send_latency.labels(route).observe(time.perf_counter() - start)


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
