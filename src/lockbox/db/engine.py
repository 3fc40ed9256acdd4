"""Engines and the unit of work: reads in a thread pool, writes through one group-committing writer.

SQLite allows one writer at a time and each ``synchronous=FULL`` commit costs an fsync, so
committing request by request caps a clinic at the disk's fsync rate. The writer thread instead
runs every pending unit of work in its own SAVEPOINT inside one transaction and commits them
together: one fsync acknowledges many messages, and a unit that fails rolls back alone. No library
offers group commit for SQLAlchemy, hence this module. PostgreSQL gets the same path, which also
serialises the audit hash chain per process without holding a row lock across requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from lockbox.db import uow
from lockbox.db.prepared import PENDING_SAVEPOINT
from lockbox.db.uow import RESOLVES_CREDENTIALS, AfterCommit, Credentials, Runtime
from lockbox.db.writer_process import WriterProcess, crossed, sendable

if TYPE_CHECKING:
    from lockbox.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# PostgreSQL's deadlock and serialisation failures: with several server processes, two writers'
# batches can lock the same rows in opposite orders (a batch takes thread rows in one order, see
# _lock_order, but units may lock other rows) and PostgreSQL aborts one statement. The unit is a
# function of its session alone, so it is run again in the next batch, once the transaction it lost
# to has ended (_lost_to); the caller only ever sees the retried outcome.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
_RETRIES = 8


# How long a deadlock's loser waits for the winner's transaction to end before running again anyway.
_WAIT_FOR_WINNER_S = 2.0
# The line of PostgreSQL's deadlock report (DETAIL, as sent to the client) naming what a backend waited for.
_WAITED_FOR = re.compile(r"Process (\d+) waits for \w+ on transaction (\d+);")


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        chain.append(seen)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return chain


def _transient(exc: BaseException) -> bool:
    return any(getattr(seen, "sqlstate", None) in _TRANSIENT_SQLSTATES for seen in _causes(exc))


def _lost_to(exc: BaseException, backend_pid: int | None) -> int | None:
    """The transaction this backend was waiting for when PostgreSQL chose it as a deadlock's victim.

    When the victim's statement is aborted, the winner is only woken: under CPU load its backend may
    not run for milliseconds, and a retry sent in that time finds the row free, takes it ahead of the
    winner (row locks are not queued for whoever finds them free) and deadlocks with it again, another
    ``deadlock_timeout``. The retry therefore waits for this transaction to end. None when the report
    does not say (another language, a lock other than a transaction's): the retry then only backs off."""
    if backend_pid is None:
        return None
    for seen in _causes(exc):
        detail = getattr(getattr(seen, "diag", None), "message_detail", None)
        if detail:
            for match in _WAITED_FOR.finditer(detail):
                if int(match[1]) == backend_pid:
                    return int(match[2])
    return None


def _winner(exc: BaseException, conn: Connection) -> int | None:
    """The transaction a unit or batch that failed with ``exc`` on ``conn`` lost a deadlock to, if it did."""
    return _lost_to(exc, _backend_pid(conn)) if _transient(exc) else None


def _backend_pid(conn: Connection) -> int | None:
    try:
        info = getattr(conn.connection.driver_connection, "info", None)
    except Exception:  # closed or invalidated: there is no backend to ask about
        return None
    return getattr(info, "backend_pid", None)


def _await_transactions(conn: Connection, xids: set[int]) -> None:
    """Until none of ``xids`` is running (each holds the lock on its own id until it ends), at most
    ``_WAIT_FOR_WINNER_S``. A subtransaction's id is held until its top-level transaction ends."""
    deadline = time.monotonic() + _WAIT_FOR_WINNER_S
    ids = [str(xid) for xid in xids]
    while time.monotonic() < deadline:
        running = conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND granted"
                 " AND transactionid::text = ANY(:ids)"), {"ids": ids}).scalar()
        conn.rollback()
        if not running:
            return
        time.sleep(0.001)


UnitFn = Callable[..., Any]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_engine(url: str, *, writer: bool) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=1 if writer else 8,
        max_overflow=0 if writer else 8,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below) so SAVEPOINTs behave; pysqlite's implicit BEGIN would not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged message survives power loss.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so the audit chain head read under it stays the head.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def _fast_savepoints(engine: Engine) -> None:
    """Every unit of work runs in its own SAVEPOINT. SQLAlchemy compiles each SAVEPOINT / RELEASE anew
    (the name changes, so its statement cache never hits): about 60 µs a unit, more than the reply's own
    statements. These send the same SQL straight to the driver; SQLAlchemy still tracks the savepoint."""
    dialect = engine.dialect

    def run(connection: Connection, sql: str) -> None:
        connection.connection.driver_connection.execute(sql)  # type: ignore[union-attr]

    # Instance attributes shadow the dialect's methods for this engine only.
    if dialect.name == "postgresql":
        _postgresql_savepoints(engine, run)
        return
    setattr(dialect, "do_savepoint", lambda connection, name: run(connection, f"SAVEPOINT {name}"))  # noqa: B010
    setattr(dialect, "do_release_savepoint",  # noqa: B010
            lambda connection, name: run(connection, f"RELEASE SAVEPOINT {name}"))
    setattr(dialect, "do_rollback_to_savepoint",  # noqa: B010
            lambda connection, name: run(connection, f"ROLLBACK TO SAVEPOINT {name}"))


def _postgresql_savepoints(engine: Engine, run: Callable[[Connection, str], None]) -> None:
    """On PostgreSQL every statement is a round trip the writer waits for, two of them per unit for its
    savepoint alone. SAVEPOINT is therefore held back and sent with the unit's first statement (one
    pipeline, ``lockbox.db.prepared``; before it, for any other statement). RELEASE is not sent: it changes
    nothing the batch's COMMIT does not, the next unit's savepoint nesting in this one; a unit that fails
    rolls back to its own, innermost, savepoint, and COMMIT keeps every unit not rolled back. (A released
    subtransaction's id stays with the transaction until its end either way.)"""
    dialect = engine.dialect

    def savepoint(connection: Connection, name: str) -> None:
        connection.connection.info[PENDING_SAVEPOINT] = f"SAVEPOINT {name}"

    def release(connection: Connection, name: str) -> None:
        connection.connection.info.pop(PENDING_SAVEPOINT, None)

    def rollback_to(connection: Connection, name: str) -> None:
        # Still held back: nothing ran since, there is nothing to undo.
        if connection.connection.info.pop(PENDING_SAVEPOINT, None) is None:
            run(connection, f"ROLLBACK TO SAVEPOINT {name}")

    setattr(dialect, "do_savepoint", savepoint)  # noqa: B010
    setattr(dialect, "do_release_savepoint", release)  # noqa: B010
    setattr(dialect, "do_rollback_to_savepoint", rollback_to)  # noqa: B010

    @event.listens_for(engine, "before_cursor_execute")
    def _send_savepoint(conn: Connection, *_: Any) -> None:
        pending = conn.connection.info.pop(PENDING_SAVEPOINT, None)
        if pending is not None:
            run(conn, pending)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _forget_savepoint(conn: Connection) -> None:
        conn.connection.info.pop(PENDING_SAVEPOINT, None)


@dataclass(eq=False)
class _Unit:
    fn: UnitFn
    kwargs: dict[str, Any]
    # A thread's caller waits on ``future``; a coroutine on ``waiter``, resolved on its own loop.
    future: Future[Any] | None = None
    waiter: asyncio.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    uid: int | None = None  # in the writer process: the server's number for it


def _lock_order(unit: _Unit) -> tuple[bool, str]:
    """Units of a batch run in order of the thread they write to (stable: one thread's units keep their
    order; units without one go first). Each batch then locks ``threads`` rows in ascending id order, so
    two processes' batches never wait on each other's rows in a cycle (a deadlock costs the loser
    ``deadlock_timeout``). Units in one batch come from concurrent requests: none waits for another."""
    thread_id = unit.kwargs.get("thread_id")
    return (True, thread_id) if isinstance(thread_id, str) else (False, "")


def _resolve_waiters(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the event loop: hand each coroutine its unit's result or exception (one call per batch)."""
    for waiter, ok, value in outcomes:
        if waiter.done():  # cancelled: the request went away; what committed stays committed
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)


def _settle(outcomes: list[tuple[_Unit, bool, Any]]) -> None:
    """Deliver outcomes: thread callers at once, each event loop's coroutines in one thread-safe call
    (a call per unit woke the loop once per message)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for unit, ok, value in outcomes:
        if unit.waiter is not None and unit.loop is not None:
            by_loop.setdefault(unit.loop, []).append((unit.waiter, ok, value))
        elif unit.future is not None and not unit.future.done():
            if ok:
                unit.future.set_result(value)
            else:
                unit.future.set_exception(value)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve_waiters, items)


class Database:
    """One per process: owns the engines, the writer thread and the runtime handed to services."""

    def __init__(self, url: str, runtime: Runtime, *, batch_max: int = 256) -> None:
        self.url = url
        self.runtime = runtime
        self.batch_max = batch_max
        self.dialect = make_url(url).get_backend_name()
        if self.dialect == "sqlite":
            db_path = make_url(url).database
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.read_engine = _sqlite_engine(url, writer=False)
            self.write_engine = _sqlite_engine(url, writer=True)
        else:
            self.read_engine = create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
            self.write_engine = self.read_engine
        _fast_savepoints(self.write_engine)
        self._sessions = sessionmaker(bind=self.read_engine, expire_on_commit=False)
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._closed = False
        self.closing = False
        self._process: WriterProcess | None = None

    def start_writer_process(self, settings: Settings) -> None:
        """From now on, units of work run in a process of their own (lockbox.db.writer_process)."""
        process = WriterProcess(self)
        process.start(settings)
        self._process = process

    @property
    def writer_process(self) -> WriterProcess | None:
        return self._process

    def writer_ready(self) -> bool:
        """False while the writer process is still starting (it warms the triage engine first)."""
        process = self._process
        return process is None or process.ready.is_set() or process.gone.is_set()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration."""
        from alembic import command

        command.upgrade(alembic_config(self.url), "head")
        self._tighten_file_modes()

    def _tighten_file_modes(self) -> None:
        if self.dialect != "sqlite":
            return
        db_path = make_url(self.url).database
        if not db_path:
            return
        for suffix in ("", "-wal", "-shm"):
            p = Path(db_path + suffix)
            if p.exists():
                os.chmod(p, 0o600)

    # -- reads --------------------------------------------------------------------------------

    def read_sync(self, fn: Callable[..., T], **kwargs: Any) -> T:
        with self._sessions() as session:
            session.info["runtime"] = self.runtime
            credentials = kwargs.get("actor")
            if isinstance(credentials, Credentials):
                from lockbox.identity.sessions import resolve_session, touch_session

                actor, stale = resolve_session(session, token=credentials.token, client_addr=credentials.client_addr)
                if stale and actor.session_id:
                    # Activity is not an acknowledged write: no need to wait for it.
                    self.submit(touch_session, session_id=actor.session_id)
                kwargs = {**kwargs, "actor": actor}
            result = fn(session, **kwargs)
            if session.new or session.dirty or session.deleted or session.info.get("audit"):
                raise RuntimeError(f"{fn.__qualname__} changed data inside a read")
            # Leaving the block closes the session: its transaction ends without a commit, and
            # loaded objects stay readable (close does not expire them, rollback would).
            return result

    async def read(self, fn: Callable[..., T], **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(lambda: self.read_sync(fn, **kwargs))

    # -- writes -------------------------------------------------------------------------------

    def _enqueue(self, unit: _Unit) -> None:
        if self._closed:
            raise RuntimeError("database is closed")
        if uow.CHECK_CROSSING and sendable(unit.fn):
            with contextlib.suppress(Exception):  # what does not pickle is written in the server (below)
                unit.kwargs = crossed(unit.kwargs)
        process = self._process
        if process is not None and process.send(unit):
            return
        self._ensure_writer()
        self._queue.put(unit)

    def submit(self, fn: Callable[..., T], **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._enqueue(_Unit(fn, kwargs, future=future))
        return future

    def write_sync(self, fn: Callable[..., T], **kwargs: Any) -> T:
        """Run ``fn(session, **kwargs)`` in a committed unit of work; returns once it is durable."""
        return self.submit(fn, **kwargs).result()

    async def write(self, fn: Callable[..., T], **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Unit(fn, kwargs, waiter=waiter, loop=loop))
        return await waiter

    def _ensure_writer(self) -> None:
        if self._writer is not None:
            return
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._writer_loop, name="lockbox-writer", daemon=True)
                self._writer.start()

    def _connected(self, conn: Connection | None) -> Connection:
        """The writer's connection, or a new one when it was closed or lost."""
        if conn is None or conn.closed or conn.invalidated:
            return self.write_engine.connect()
        return conn

    def _writer_loop(self) -> None:
        conn: Connection | None = None
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            stop = False
            while len(batch) < self.batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            conn = self.commit_batch(conn, batch)
            if stop:
                break
        if conn is not None:
            conn.close()

    def commit_batch(self, conn: Connection | None, batch: list[_Unit]) -> Connection | None:
        """Run, commit and answer one batch, running it again after a deadlock; returns the connection
        to use for the next (None once it was closed). The writer thread's loop, and the writer process's."""
        batch = sorted(batch, key=_lock_order)
        for attempt in range(_RETRIES + 1):
            last = attempt == _RETRIES
            winners: set[int] = set()
            try:
                conn = self._connected(conn)
                batch = self._run_batch(conn, batch, retry=not last, winners=winners)
            except BaseException as exc:  # the whole batch failed to commit: nobody is acknowledged
                if conn is not None:
                    if (xid := _winner(exc, conn)) is not None:
                        winners.add(xid)
                    conn.close()
                    conn = None
                if _transient(exc) and not last:
                    log.warning("batch of %d units hit %s; running it again", len(batch), type(exc).__name__)
                else:
                    log.error("commit failed for a batch of %d units: %s", len(batch), type(exc).__name__)
                    self.deliver([(unit, False, exc) for unit in batch])
                    batch = []
            if not batch:
                break
            if winners:
                try:
                    conn = self._connected(conn)
                    _await_transactions(conn, winners)
                    continue
                except Exception as exc:  # the wait is an optimisation: the retry is right without it
                    log.warning("could not wait for a deadlock's winner: %s", type(exc).__name__)
                    if conn is not None:
                        conn.close()
                        conn = None
            # Let the other writer's batch commit first; jitter, so two writers do not meet again in step.
            time.sleep(random.uniform(0.001, 0.004) * 2**attempt)
        return conn

    def _run_batch(self, conn: Connection, batch: list[_Unit], *, retry: bool = False,
                   winners: set[int] | None = None) -> list[_Unit]:
        """Run and commit a batch; returns the units to run again (``retry``: those that lost a
        deadlock), which are neither committed nor answered yet. The transactions they lost to are
        added to ``winners``."""
        from lockbox.audit.chain import seal

        done: list[tuple[_Unit, Any, list[tuple[AfterCommit, tuple[Any, ...]]]]] = []
        failed: list[tuple[_Unit, bool, Any]] = []
        again: list[_Unit] = []
        audit_entries: list[Any] = []
        head: tuple[int, str] | None = None
        try:
            with conn.begin():
                for unit in batch:
                    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
                    session.info["runtime"] = self.runtime
                    try:
                        kwargs = unit.kwargs
                        credentials = kwargs.get("actor")
                        if isinstance(credentials, Credentials) and not getattr(unit.fn, RESOLVES_CREDENTIALS, False):
                            from lockbox.identity.sessions import actor_for

                            kwargs = {**kwargs, "actor": actor_for(session, credentials)}
                        result = unit.fn(session, **kwargs)
                        session.commit()
                    except BaseException as exc:
                        session.rollback()
                        if retry and _transient(exc):
                            again.append(unit)
                            if winners is not None and (xid := _winner(exc, conn)) is not None:
                                winners.add(xid)
                        else:
                            failed.append((unit, False, exc))
                        continue
                    finally:
                        session.close()
                    audit_entries.extend(session.info.get("audit", ()))
                    done.append((unit, result, session.info.get("after_commit", [])))
                if audit_entries:
                    head = seal(conn, audit_entries, self.runtime)
        except BaseException as exc:
            if retry and _transient(exc):
                raise  # the whole batch runs again; nobody has been answered
            self.deliver(failed)  # their own errors; the caller fails the rest with the commit's
            raise
        # Committed: from here on nothing may turn an acknowledged unit into a failure. The head is
        # recorded first, so whoever is acknowledged can already find it outside the database.
        if head is not None:
            try:
                self.runtime.audit_head(*head)
            except Exception as exc:  # the type only: an exception's text may quote data
                log.error("could not record the audit head outside the database: %s", type(exc).__name__)
        self.deliver(failed + [(unit, True, result) for unit, result, _ in done])
        self.run_after_commit([cb for _, _, callbacks in done for cb in callbacks])
        return again

    def deliver(self, outcomes: list[tuple[_Unit, bool, Any]]) -> None:
        """Hand committed (or failed) units their outcome; the writer process sends them back instead."""
        if uow.CHECK_CROSSING:
            outcomes = [(unit, *_crossed_outcome(unit, ok, value)) for unit, ok, value in outcomes]
        _settle(outcomes)

    def run_after_commit(self, callbacks: list[tuple[AfterCommit, tuple[Any, ...]]]) -> None:
        """Run committed units' callbacks (in the server: the writer process sends them back here)."""
        for fn, args in callbacks:
            try:
                fn(self.runtime, *args)
            except Exception as exc:
                log.error("after-commit callback failed: %s", type(exc).__name__)

    def close(self, *, checkpoint: bool = True) -> None:
        if self._closed:
            return
        process = self._process
        if checkpoint and (self._writer is not None or process is not None):
            from lockbox.audit.chain import checkpoint_head

            # Sign the head at shutdown, so a later cut of the tail is provable from the database alone. The
            # units sent before are committed first: in their batch the head would not be sealed yet (and
            # the checkpoint, touching no thread, would run first in it).
            try:
                self.write_sync(_nothing)
                self.write_sync(checkpoint_head)
            except Exception as exc:
                log.error("could not sign the audit head at shutdown: %s", type(exc).__name__)
        self.closing = True
        if process is not None:
            process.stop()
        self._closed = True
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=30)
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()


def _nothing(_session: Session) -> None:
    """A unit that only waits for the ones before it to commit."""


def _crossed_outcome(unit: _Unit, ok: bool, value: Any) -> tuple[bool, Any]:
    """The test suite's check (``uow.CHECK_CROSSING``): an outcome as the writer process would send it."""
    if not sendable(unit.fn):
        return ok, value
    try:
        return ok, crossed(value)
    except Exception as exc:
        name = getattr(unit.fn, "__qualname__", "?")
        return False, AssertionError(f"the outcome of {name} cannot come back from the writer process: {exc!r}")


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg
