"""The ASGI application: wires settings, keys, storage and the realtime hub, then mounts each router."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from lockbox.audit.headfile import HeadFile
from lockbox.clock import Clock, SystemClock
from lockbox.config import Settings, load_settings
from lockbox.crypto.keys import keyring_for
from lockbox.db import Database
from lockbox.db.uow import Runtime
from lockbox.http import AppState, SecurityHeaders, document_body_models, install_error_handlers
from lockbox.realtime.hub import Hub
from lockbox.routing.screening import ScreeningPool

# Allocations between collections of the youngest generation (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def build_database(settings: Settings, *, clock: Clock | None = None, hub: Hub | None = None) -> Database:
    """The storage and runtime every entry point (server, CLI, tests) shares."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keyring = keyring_for(settings)  # the key file, or Vault transit (LOCKBOX_KEY_PROVIDER)
    head = HeadFile(settings.audit_head_file, keyring)
    runtime = Runtime(settings=settings, keyring=keyring, clock=clock or SystemClock(), audit_head=head.write)
    if hub is not None:
        runtime.publish = hub.publish
        runtime.end_sessions = hub.end_sessions
    return Database(settings.resolved_database_url, runtime, batch_max=settings.commit_batch_max)


def make_hub(settings: Settings) -> Hub:
    """In-process fan-out; with ``redis_url`` set, events also reach the sockets of other processes."""
    if settings.redis_url:
        from lockbox.realtime.redis_hub import RedisHub

        return RedisHub(settings.redis_url, channel=f"{settings.redis_prefix}:events")
    return Hub()


_heap_frozen = threading.Event()


def _warm_up_triage(screening: ScreeningPool | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
    from lockbox.routing.classify import warm_up

    warm_up()
    _freeze_heap()
    # The helpers are forked now, warm and frozen, so they share the engine's memory with the server.
    if screening is not None and loop is not None and screening.fork():
        asyncio.run_coroutine_threadsafe(screening.connect(), loop)


def triage_processes(settings: Settings) -> int:
    if settings.triage_processes is not None:
        return settings.triage_processes
    return 0 if settings.env == "test" else 1


def writer_process(settings: Settings) -> bool:
    if settings.writer_process is not None:
        return settings.writer_process
    return settings.env != "test"


def _freeze_heap() -> None:
    """Keep the cyclic garbage collector off the long-lived heap (the triage lexicon and model, routes,
    schemas): every collection of the oldest generation walked all of it, and under load the collector
    took a quarter of the server's CPU. Objects made later are collected as usual, with a larger first
    generation so that a request's short-lived objects do not set off a collection every few requests.
    Once per process: what a frozen object references is never collected as a cycle."""
    if _heap_frozen.is_set():
        return
    _heap_frozen.set()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def create_app(
    settings: Settings | None = None, *, clock: Clock | None = None, migrate: bool = True, workers: int = 1
) -> FastAPI:
    """The whole server. ``workers`` in-process job workers run beside it (0 when separate
    ``lockbox worker`` processes do the background work)."""
    settings = settings or load_settings()
    if clock is not None and writer_process(settings):
        # The writer process keeps the system's time: a clock of the caller's would not reach it.
        raise ValueError("a clock of one's own needs writer_process off (env=test turns it off)")
    hub = make_hub(settings)
    db = build_database(settings, clock=clock, hub=hub)
    if migrate:
        db.migrate()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from lockbox.jobs.worker import Worker

        loop = asyncio.get_running_loop()
        hub.bind(loop)
        if writer_process(settings):
            # Before anything writes: from here on the server's units commit in the writer process.
            await anyio.to_thread.run_sync(db.start_writer_process, settings)
        screening: ScreeningPool | None = None
        if triage_processes(settings):
            screening = app.state.lockbox_screening = ScreeningPool(triage_processes(settings))
        # The triage model trains on first use (seconds): do it now, off the event loop, not on a
        # patient's first message.
        threading.Thread(target=_warm_up_triage, args=(screening, loop), name="lockbox-warm-up", daemon=True).start()
        running = [Worker(db) for _ in range(workers)]
        for worker in running:
            worker.start()
        from lockbox.routing.watch import RulesWatcher

        # A changed or broken rules file is noticed with no message arriving.
        rules_watcher = RulesWatcher(db, every_s=settings.routing_rules_watch_s)
        if settings.routing_rules_watch_s > 0:
            rules_watcher.start()
        from lockbox.gateway import server as smtp_gateway

        gateway = await smtp_gateway.start(db, settings)
        await anyio.to_thread.run_sync(app.state.metrics.database.start)
        yield
        await smtp_gateway.stop(gateway)
        for worker in running:
            worker.stop()
        rules_watcher.stop()
        await hub.aclose()
        if screening is not None:
            screening.close()
        db.close()

    app = FastAPI(
        title="Lockbox",
        version="0.1.0",
        description="Secure message center for healthcare",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        # No OpenTelemetry here (metrics are /metrics, the record is the audit log): FastAPI's native
        # telemetry would otherwise ask the global providers on every request whether it is on, and a
        # provider configured by the environment would export request data outside the audited logs.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.lockbox = AppState(settings=settings, db=db, hub=hub)
    install_error_handlers(app)
    document_body_models(app)
    app.add_middleware(SecurityHeaders, hsts=settings.public_url.startswith("https://"))
    # Operations: metrics by route template, and forwarded client addresses from trusted proxies only
    # (added last, so it runs first and everything after sees the real client and scheme).
    from lockbox.system.metrics import Metrics, MetricsMiddleware

    app.state.metrics = Metrics(db)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    from lockbox.system.production import trusted_proxy_list

    if settings.proxy_headers and trusted_proxy_list(settings):
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted_proxy_list(settings))

    from lockbox.routers import mount_all
    from lockbox.web import mount as mount_web

    mount_all(app)
    mount_web(app)
    from lockbox.gateway.pages import router as secure_pages  # the external recipient's pages

    app.include_router(secure_pages)
    from lockbox.system.api import metrics_router

    app.include_router(metrics_router)
    return app
