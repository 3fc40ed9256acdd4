"""The emergency check of patients' replies in helper processes forked from the warmed-up server, so that it
runs on another core than the one the server's interpreter lock holds; the reply's unit of work then uses
the answer instead of checking the text itself.

The helpers are copies of the server taken after the triage warm-up: the same lexicon, ConText and net,
hence the same answer as ``classify.emergency_check`` in the server (the tests compare both). Whenever a
helper cannot answer (not started yet, gone, stalled, failed on a text) the request goes on unscreened and
the unit of work checks the text itself, as it always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from typing import Any

from lockbox.routing.classify import Triage
from lockbox.routing.service import UNSCREENED

log = logging.getLogger(__name__)

# A batch not answered within this time is checked in the server instead (and the helper is not fed
# again until it answers): a patient's reply never waits on a helper for longer.
STALL_S = 2.0
# Sessions whose sender is known to be a patient (hashes, not tokens): only their replies are screened.
SENDERS_MAX = 50_000
_HEADER = 4


def _frame(obj: Any) -> bytes:
    # JSON, not pickle: nothing that crosses a process boundary is ever unpickled.
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return len(payload).to_bytes(_HEADER, "big") + payload


def _triage_out(triage: Triage | None) -> list[Any] | None:
    if triage is None:
        return None
    return [triage.urgency, triage.topic, triage.language, list(triage.signals), triage.explanation]


def _triage_in(fields: list[Any] | None) -> Triage | None:
    if fields is None:
        return None
    urgency, topic, language, signals, explanation = fields
    return Triage(urgency, topic, language, tuple(signals), explanation)


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _helper(requests_fd: int, results_fd: int) -> None:
    """The forked helper's whole life: read batches of (id, text), answer (id, ok, Triage | None)."""
    # Only the forking thread lives on here. Nothing of the server's (sockets, database files, the event
    # loop's wake-up fd, its signal handlers) may be used or kept open by this copy.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    keep = {0, 1, 2, requests_fd, results_fd}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
    # The inherited heap is never collected here: no finaliser of the server's objects may run in a copy.
    gc.freeze()
    from lockbox.routing.classify import emergency_check

    while True:
        head = _read_exact(requests_fd, _HEADER)
        if head is None:
            return  # the server closed its end: it is stopping or gone
        data = _read_exact(requests_fd, int.from_bytes(head, "big"))
        if data is None:
            return
        answers: list[tuple[int, bool, Any]] = []
        for ident, text in json.loads(data):
            try:
                answers.append((ident, True, _triage_out(emergency_check(text))))
            except Exception:  # the server checks this text itself and meets the error there
                answers.append((ident, False, None))
        frame = _frame(answers)
        view = memoryview(frame)
        while view:
            view = view[os.write(results_fd, view):]


class _Results(asyncio.Protocol):
    def __init__(self, pool: ScreeningPool) -> None:
        self.pool = pool
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= _HEADER:
            size = int.from_bytes(self.buffer[:_HEADER], "big")
            if len(self.buffer) < _HEADER + size:
                return
            payload = bytes(self.buffer[_HEADER:_HEADER + size])
            del self.buffer[:_HEADER + size]
            self.pool._deliver(json.loads(payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._lost()


class ScreeningPool:
    """Helper processes for ``emergency_check``, fed from the event loop in batches.

    ``fork()`` runs once, in the thread that warmed the triage engine up; ``connect()`` then runs on the
    event loop. ``screen()`` is for the loop only."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self.pids: list[int] = []
        self._fds: list[tuple[int, int]] = []  # (requests write end, results read end) per helper
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writers: list[asyncio.WriteTransport] = []
        self._readers: list[asyncio.BaseTransport] = []
        self._next = itertools.count()
        self._turn = itertools.count()
        self._waiting: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._outbox: list[tuple[int, str]] = []
        self._flushing = False
        self._stalled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self._connected = False
        self._patients: OrderedDict[str, bool] = OrderedDict()
        self.answered = 0  # texts a helper checked
        self._lock = threading.Lock()

    # -- start and stop ---------------------------------------------------------------------------

    def fork(self) -> bool:
        """Fork the helpers now (the triage engine must be warm). False when none could be started."""
        with self._lock:
            if self._closed or self.pids:
                return bool(self.pids)
            for _ in range(self.processes):
                requests_r, requests_w = os.pipe()
                results_r, results_w = os.pipe()
                try:
                    pid = os.fork()
                except OSError as exc:
                    log.warning("emergency check stays in the server: could not fork a helper (%s)",
                                type(exc).__name__)
                    for fd in (requests_r, requests_w, results_r, results_w):
                        os.close(fd)
                    break
                if pid == 0:  # the helper: never returns into the server's code
                    code = 0
                    try:
                        _helper(requests_r, results_w)
                    except BaseException:
                        code = 1
                    finally:
                        os._exit(code)
                os.close(requests_r)
                os.close(results_w)
                self.pids.append(pid)
                self._fds.append((requests_w, results_r))
            return bool(self.pids)

    async def connect(self) -> None:
        """Attach the helpers' pipes to the running loop; replies are screened from then on."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        # Each pair leaves ``_fds`` as its pipes are attached: close() closes what is in either, once.
        while self._fds and not self._closed:
            requests_w, results_r = self._fds.pop(0)
            writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(requests_w, "wb", buffering=0))
            self._writers.append(writer)
            reader, _ = await loop.connect_read_pipe(lambda: _Results(self), os.fdopen(results_r, "rb", buffering=0))
            self._readers.append(reader)
        self._connected = not self._closed and bool(self._writers)

    def close(self) -> None:
        """Stop feeding the helpers; they exit when their pipe closes. Waiting replies go unscreened."""
        with self._lock:
            self._closed = True
        self._connected = False
        for t in (*self._writers, *self._readers):
            try:
                t.close()
            except RuntimeError:  # its loop has closed already: close the pipe itself
                pipe = t.get_extra_info("pipe")
                if pipe is not None:
                    pipe.close()
        self._writers, self._readers = [], []
        for requests_w, results_r in self._fds:  # never attached
            for fd in (requests_w, results_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds = []
        self._release_all()
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError, OSError):
                # The helper exits at once on end of file; reap it so that no zombie is left.
                for _ in range(50):
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                    time.sleep(0.01)
                else:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
        self.pids = []

    @property
    def ready(self) -> bool:
        return self._connected and not self._stalled and not self._closed

    # -- who is screened --------------------------------------------------------------------------

    @staticmethod
    def sender_key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def is_patient(self, key: str) -> bool:
        """Whether this session last sent as a patient. A hint only: the unit of work decides by the
        actor it resolves, and checks the text itself when the hint was wrong."""
        return self._patients.get(key, False)

    def learn(self, key: str, patient: bool) -> None:
        self._patients[key] = patient
        self._patients.move_to_end(key)
        while len(self._patients) > SENDERS_MAX:
            self._patients.popitem(last=False)

    # -- screening --------------------------------------------------------------------------------

    async def screen(self, text: str) -> Any:
        """``emergency_check(text)`` from a helper, or ``UNSCREENED`` when no helper could answer."""
        if not self.ready or self._loop is None:
            return UNSCREENED
        loop = self._loop
        ident = next(self._next)
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiting[ident] = (waiter, loop.time())
        self._outbox.append((ident, text))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        try:
            return await waiter
        finally:
            self._waiting.pop(ident, None)

    def _flush(self) -> None:
        self._flushing = False
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        if not self.ready:
            for ident, _ in batch:
                self._answer(ident, UNSCREENED)
            return
        writer = self._writers[next(self._turn) % len(self._writers)]
        try:
            writer.write(_frame(batch))
        except Exception as exc:  # the pipe broke between two batches
            log.warning("emergency check helper unavailable (%s): checking in the server", type(exc).__name__)
            self._lost()
            return
        if self._watchdog is None and self._loop is not None:
            self._watchdog = self._loop.call_later(STALL_S / 2, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting or self._loop is None:
            return
        oldest = min(sent for _, sent in self._waiting.values())
        if self._loop.time() - oldest >= STALL_S:
            if not self._stalled:
                log.warning("emergency check helper stalled: checking in the server until it answers")
            self._stalled = True
            self._release_all()
            return
        self._watchdog = self._loop.call_later(STALL_S / 2, self._watch)

    def _deliver(self, answers: list[tuple[int, bool, Any]]) -> None:
        if self._stalled:
            log.warning("emergency check helper answers again")
            self._stalled = False
        for ident, ok, triage in answers:
            self.answered += ok
            self._answer(ident, _triage_in(triage) if ok else UNSCREENED)

    def _answer(self, ident: int, value: Any) -> None:
        entry = self._waiting.pop(ident, None)
        if entry is not None and not entry[0].done():  # done: the request went away
            entry[0].set_result(value)

    def _release_all(self) -> None:
        for ident in list(self._waiting):
            self._answer(ident, UNSCREENED)

    def _lost(self) -> None:
        if not self._closed and self._writers:
            log.warning("emergency check helper gone: checking in the server")
        self._connected = False
        for t in (*self._writers, *self._readers):
            t.close()
        self._writers, self._readers = [], []
        self._release_all()


def pool_of(app: Any) -> ScreeningPool | None:
    pool: ScreeningPool | None = getattr(app.state, "lockbox_screening", None)
    return pool
