"""The group-committing writer in a process of its own, so that its CPU is not taken from the event loop.

A server process is one interpreter lock: with the writer as a thread, a send's unit of work and its HTTP
handling share one core however many the machine has, and the writer's serial chain waits for the lock at
every statement. ``lockbox serve`` therefore starts this module as a child (a fresh interpreter, not a fork
of a server that already runs threads and holds connections) and hands it every unit of work whose function
is a module-level one: the function travels by reference, its arguments, result or exception and its
after-commit callbacks as pickles over a private socket pair between the two processes (never a network
socket; pickle is only ever read from our own child or parent). Callbacks run back in the server, whose
sockets, job workers and caches they are about. A unit that cannot travel (a closure) runs on the server's
own writer thread, which on SQLite waits for the write lock as a second process would.

If the child dies, the units it was running fail (their outcome is unknown: they may have committed, and
nothing was acknowledged), and once it is known to be gone the server writes in-process again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lockbox.errors import ServiceUnavailable

if TYPE_CHECKING:
    from lockbox.config import Settings
    from lockbox.db.engine import Database, _Unit

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_BUFFER = 4 << 20  # bytes each way: a burst of requests never blocks the event loop on a full socket


class WriterGone(ServiceUnavailable):
    """The writer process ended while this unit was with it: it may or may not have been committed."""

    def __init__(self, detail: str = "The database writer stopped while saving this; try again.") -> None:
        super().__init__(detail)


class CrossingError(RuntimeError):
    """A unit's result or exception could not be sent back from the writer process."""


def frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def frames(sock: socket.socket) -> Iterator[list[Any]]:
    """Every complete frame the socket has delivered, one list per read; ends at end of file."""
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        buf += chunk
        out = []
        at = 0
        while len(buf) - at >= 4:
            (size,) = _LEN.unpack_from(buf, at)
            if len(buf) - at - 4 < size:
                break
            out.append(pickle.loads(memoryview(buf)[at + 4:at + 4 + size]))  # noqa: S301 (our own peer)
            at += 4 + size
        del buf[:at]
        if out:
            yield out


# Module-level functions only: a closure is a new object at every call, and keeping the answer for it would
# keep it (and what it closes over) alive for good.
_sendable: set[Any] = set()


def sendable(fn: Any) -> bool:
    """Whether ``fn`` can travel by reference (a module-level function or method)."""
    if fn in _sendable:
        return True
    try:
        pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    _sendable.add(fn)
    return True


def crossed(value: Any) -> Any:
    """``value`` as the other process would receive it (the test suite's check that everything crosses)."""
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301 (our own bytes)


class WriterProcess:
    """The server's side: starts the child, sends units, settles their outcomes and runs their callbacks."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.ready = threading.Event()
        self.gone = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._pending: dict[int, _Unit] = {}
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._warned: set[str] = set()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, settings: Settings) -> None:
        ours, theirs = socket.socketpair()
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 (this interpreter, this module)
                # -c, not -m: run as __main__, this module would exist twice, its classes with it.
                [sys.executable, "-c", "from lockbox.db.writer_process import main; main()", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            theirs.close()
        self._sock = ours
        ours.sendall(frame(settings))
        self._reader = threading.Thread(target=self._read, name="lockbox-writer-results", daemon=True)
        self._reader.start()

    def send(self, unit: _Unit) -> bool:
        """Hand ``unit`` to the child; False when it cannot travel (a closure, or arguments that do not
        pickle) or the child is gone: the caller then writes in the server, which is correct on both
        backends (on SQLite it waits for the write lock as a second process would), only slower."""
        if self.gone.is_set() or not sendable(unit.fn):
            self._warn(unit)
            return False
        try:
            data = pickle.dumps((unit.fn, unit.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            self._warn(unit)
            return False
        with self._lock:
            if self.gone.is_set() or self._sock is None:
                return False
            self._next += 1
            uid = self._next
            self._pending[uid] = unit
            # When the child's end is closed (it is exiting or dead), the reader fails what it had, this unit
            # with it: the caller hears WriterGone, not a silent second attempt.
            with contextlib.suppress(OSError):
                self._sock.sendall(frame((uid, data)))
        return True

    def _warn(self, unit: _Unit) -> None:
        name = getattr(unit.fn, "__qualname__", "?")
        if name not in self._warned and not self.gone.is_set():
            self._warned.add(name)
            log.warning("unit %s cannot go to the writer process: written in the server", name)

    def _read(self) -> None:
        from lockbox.db.engine import _settle

        assert self._sock is not None
        try:
            for batch in frames(self._sock):
                outcomes = []
                callbacks = []
                for kind, *rest in batch:
                    if kind == "r":
                        uid, ok, payload = rest
                        with self._lock:
                            unit = self._pending.pop(uid, None)
                        if unit is not None:
                            outcomes.append((unit, *_opened(ok, payload)))
                    elif kind == "c":
                        try:
                            callbacks.extend(pickle.loads(rest[0]))  # noqa: S301 (our own child)
                        except Exception as exc:
                            log.error("writer process: after-commit callbacks unreadable: %s", type(exc).__name__)
                    elif kind == "ready":
                        self.ready.set()
                if outcomes:
                    _settle(outcomes)
                self.db.run_after_commit(callbacks)
        except Exception as exc:  # the type only: a frame may hold data
            # The stream cannot be trusted past this: end the child, then fail what it had.
            log.error("writer process: reading its answers failed: %s", type(exc).__name__)
            if self._proc is not None:
                self._proc.kill()
        self._ended()

    def _ended(self) -> None:
        """The child closed its end: wait until it has exited (its transaction is over, its locks are
        released), then fail what it had and let the server write in-process."""
        from lockbox.db.engine import _settle

        if self._proc is not None:
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        with self._lock:
            self.gone.set()
            pending, self._pending = list(self._pending.values()), {}
        if self._sock is not None:
            self._sock.close()
        if pending or not self.db.closing:
            log.error("writer process exited (%s); %d units failed; writing in the server from now on",
                      None if self._proc is None else self._proc.returncode, len(pending))
        _settle([(unit, False, WriterGone()) for unit in pending])

    def stop(self, timeout: float = 30.0) -> None:
        """End of input: the child finishes what it was sent, answers and exits."""
        if self._sock is not None and not self.gone.is_set():
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
        if self._reader is not None:
            self._reader.join(timeout)


def _opened(ok: bool, payload: bytes) -> tuple[bool, Any]:
    """A unit's outcome, pickled on its own so that one that cannot be read fails that unit alone."""
    try:
        return ok, pickle.loads(payload)  # noqa: S301 (our own child)
    except Exception as exc:
        log.error("writer process: an outcome could not be read: %s", type(exc).__name__)
        return False, CrossingError("a unit's outcome could not be read")


# -- the child ---------------------------------------------------------------------------------------


def _child(fd: int) -> None:
    from lockbox import logs
    from lockbox.app import build_database
    from lockbox.db.engine import _settle

    sock = socket.socket(fileno=fd)
    incoming = frames(sock)
    first = next(incoming)
    settings, early = first[0], first[1:]
    logs.configure()
    db = build_database(settings)
    send_lock = threading.Lock()

    def send(items: list[Any]) -> None:
        data = b"".join(items)
        # The server gone: nobody is waiting for these answers, and its end of file ends the loop below
        # once what it sent is committed.
        with send_lock, contextlib.suppress(OSError):
            sock.sendall(data)

    def deliver(outcomes: list[tuple[_Unit, bool, Any]]) -> None:
        out = []
        local = []
        for unit, ok, value in outcomes:
            if unit.uid is None:
                local.append((unit, ok, value))
                continue
            try:
                payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                log.error("writer process: the outcome of %s could not be sent back: %s",
                          getattr(unit.fn, "__qualname__", "a unit"), type(exc).__name__)
                ok, payload = False, pickle.dumps(CrossingError("a unit's outcome could not be sent back"))
            out.append(frame(("r", unit.uid, ok, payload)))
        if out:
            send(out)
        _settle(local)

    def after_commit(callbacks: list[tuple[Any, tuple[Any, ...]]]) -> None:
        if not callbacks:
            return
        try:
            send([frame(("c", pickle.dumps(callbacks, protocol=pickle.HIGHEST_PROTOCOL)))])
        except Exception as exc:
            log.error("writer process: after-commit callbacks not sent: %s", type(exc).__name__)

    db.deliver = deliver  # type: ignore[method-assign]
    db.run_after_commit = after_commit  # type: ignore[method-assign]
    # Units that route a new patient thread triage it here: build the engine before saying ready, so the
    # first patient's message does not wait for it.
    from lockbox.jobs.service import load_handlers
    from lockbox.routing.classify import warm_up

    load_handlers()
    warm_up()
    from lockbox.app import _freeze_heap

    _freeze_heap()
    send([frame(("ready",))])
    from lockbox.db.engine import _Unit

    # This thread reads and commits in turn: everything that arrived while a batch committed is the next
    # batch (group commit without a hand-over between threads).
    conn = None
    try:
        for received in itertools.chain([early], incoming):
            units = []
            for uid, data in received:
                try:
                    fn, kwargs = pickle.loads(data)  # noqa: S301 (from our own server)
                except Exception as exc:
                    log.error("writer process: a unit could not be read: %s", type(exc).__name__)
                    deliver([(_Unit(_unreadable, {}, uid=uid), False, CrossingError("a unit could not be read"))])
                    continue
                units.append(_Unit(fn, kwargs, uid=uid))
            for at in range(0, len(units), db.batch_max):
                conn = db.commit_batch(conn, units[at:at + db.batch_max])
    finally:
        # The server closed its end (shutdown, or it died): what it sent is committed above. The server
        # signs the audit head itself before closing (through this process), so no second checkpoint.
        if conn is not None:
            conn.close()
        db.close(checkpoint=False)


def _unreadable(_session: Any) -> None:
    """Stands for a unit that could not be unpickled, in its failed outcome."""


def main() -> None:
    # Ctrl-C in a terminal, or a service manager's SIGTERM to the whole group, is for the server: this
    # process ends when the server closes its socket, after the last units it was sent (and the
    # server's closing checkpoint) are committed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _child(int(sys.argv[1]))
    os._exit(0)

