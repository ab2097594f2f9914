"""How a commit wakes the worker: only when what it made due comes before the worker's planned
wake-up. An unplanned (awake) worker is always woken, so nothing committed is ever slept past.
"""

from __future__ import annotations

import threading
from datetime import datetime


class Wakeup:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._planned: datetime | None = None

    def ring(self, due: datetime | None = None) -> None:
        """Something becomes due at `due` (None: now)."""
        with self._lock:
            if due is None or self._planned is None or due < self._planned:
                self._event.set()

    def sleep_until(self, planned: datetime, timeout: float) -> None:
        """Sleep until `planned` (at most `timeout` seconds) unless rung for something sooner."""
        with self._lock:
            self._planned = planned
        self._event.wait(timeout)
        with self._lock:
            self._planned = None
            self._event.clear()

    def wait(self, timeout: float) -> None:
        """Sleep without a plan (after an error): any ring wakes."""
        self._event.wait(timeout)
        self._event.clear()

    def set(self) -> None:
        self._event.set()
