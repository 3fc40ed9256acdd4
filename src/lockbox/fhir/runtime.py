"""One FHIR connection per process: an event loop on its own thread running the async client, so that
synchronous callers (job handlers, the CLI, routing in the writer thread) can use it without owning a loop,
and so that routing can ask for a refresh without ever waiting for the network.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from lockbox.config import Settings
from lockbox.fhir.cache import ContextCache
from lockbox.fhir.client import FhirClient
from lockbox.fhir.exceptions import FhirUnavailable

T = TypeVar("T")
# Refreshes running at once: a burst of first messages must not open a connection per patient.
MAX_REFRESHES = 8


class FhirRuntime:
    def __init__(self, settings: Settings, *, client_factory: Callable[[Settings], FhirClient] = FhirClient) -> None:
        self.settings = settings
        self.cache = ContextCache(max_entries=settings.fhir_context_max_patients)
        self._client_factory = client_factory
        self._client: FhirClient | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lockbox-fhir", daemon=True)
        self._thread.start()
        self._inflight: set[str] = set()
        self._inflight_lock = threading.Lock()
        self._slots = asyncio.Semaphore(MAX_REFRESHES)
        self._closed = False

    @property
    def client(self) -> FhirClient:
        """Only touched on the runtime's loop (httpx's pool belongs to it)."""
        if self._client is None:
            self._client = self._client_factory(self.settings)
        return self._client

    def submit(self, make: Callable[[FhirClient], Coroutine[Any, Any, T]]) -> Future[T]:
        async def run() -> T:
            return await make(self.client)

        return asyncio.run_coroutine_threadsafe(run(), self._loop)

    def call(self, make: Callable[[FhirClient], Coroutine[Any, Any, T]]) -> T:
        """Run on the loop and wait (never from the loop's own thread, nor from the writer thread). The wait
        is bounded: a call that outlives every timeout and back-off it could take is abandoned."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("FhirRuntime.call from its own loop")
        future = self.submit(make)
        s = self.settings
        # A search may follow pages and a context read makes a few calls: allow for several full calls.
        limit = 4 * (s.fhir_timeout_s + 10) * (s.fhir_retries + 1) + 30
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise FhirUnavailable("The EHR did not answer in time; Lockbox will try again.") from None

    def refresh_soon(self, key: str, make: Callable[[FhirClient], Awaitable[Any]]) -> bool:
        """Start a background refresh for ``key`` unless one is running; never waits. True when started."""
        if self._closed:
            return False
        with self._inflight_lock:
            if key in self._inflight:
                return False
            self._inflight.add(key)

        async def run() -> None:
            try:
                async with self._slots:
                    await make(self.client)
            finally:
                with self._inflight_lock:
                    self._inflight.discard(key)

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        future.add_done_callback(_swallow)
        return True

    def idle(self) -> bool:
        with self._inflight_lock:
            return not self._inflight

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            if self._client is not None:
                await self._client.aclose()

        # Closing a pool at exit: nothing useful can be done about a failure.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def _swallow(future: Future[Any]) -> None:
    # A failed refresh is already recorded by whoever ran it; the future's exception must not go unread.
    if not future.cancelled():
        future.exception()


_runtimes: dict[int, FhirRuntime] = {}
_lock = threading.Lock()


def runtime_for(settings: Settings) -> FhirRuntime:
    key = id(settings)
    rt = _runtimes.get(key)
    if rt is None:
        with _lock:
            rt = _runtimes.get(key)
            if rt is None:
                rt = _runtimes[key] = FhirRuntime(settings)
    return rt


def close_all() -> None:
    with _lock:
        runtimes = list(_runtimes.values())
        _runtimes.clear()
    for rt in runtimes:
        rt.close()


atexit.register(close_all)
