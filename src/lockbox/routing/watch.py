"""The rules file's watcher: a change is loaded, or refused with its alert, within seconds even when no
message arrives (the decision path alone would only notice on the next message)."""

from __future__ import annotations

import logging
import threading

from lockbox.db import Database
from lockbox.routing.rules import CHECK_EVERY_S, RuleStore, store_for

log = logging.getLogger(__name__)


class RulesWatcher:
    """Polls the file's mtime from a daemon thread. Polling rather than inotify (watchfiles): a stat follows
    the symlink swap by which mounted configuration changes (Kubernetes ConfigMaps), works on network
    filesystems, and is what the store already decides by; one stat every few seconds costs nothing."""

    def __init__(self, db: Database, *, every_s: float = CHECK_EVERY_S) -> None:
        self.db = db
        self.every_s = max(0.01, every_s)
        self.store: RuleStore = store_for(db.runtime.settings.routing_rules)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Look at the file now and raise a refused file's alert; returns whether one was raised."""
        from lockbox.routing.service import raise_rule_alerts

        self.store.check_now()
        alerts = self.store.take_alerts()
        if not alerts:
            return False
        try:
            self.db.write_sync(raise_rule_alerts, rules_file=self.store.path.name, alerts=alerts)
        except BaseException:
            self.store.restore_alerts(alerts)  # raised on the next look, or by the next decision
            raise
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception as exc:  # the watcher outlives a database hiccup; the next look retries
                log.warning("routing rules watcher: %s", type(exc).__name__)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lockbox-rules-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
