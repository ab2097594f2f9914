"""Long background work that shares a process with the worker's revocations — and so Python's
interpreter lock — is paced: after each short slice of its own CPU time it sleeps as long again,
so a worker pass waits at most a slice for the lock at each step, instead of for the whole of,
say, a reconcile of 100,000 grants (seconds, during which revocations stalled: the revocation
lag benchmark's p99 at 100,000 active grants went from ~25 ms to ~3 s while one ran).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Pace:
    """Call between small steps: once the calling thread has used `slice_s` of CPU since its
    last rest, it sleeps `rest` times that long."""

    # Reading the thread's CPU clock is a system call: look at it every so many steps.
    EVERY = 32

    def __init__(self, slice_s: float = 0.002, rest: float = 1.0) -> None:
        self.slice_s = slice_s
        self.rest = rest
        self._mark = time.thread_time()
        self._steps = 0
        self.rested = 0.0  # seconds slept, for reports and tests

    def __call__(self) -> None:
        self._steps += 1
        if self._steps % self.EVERY:
            return
        used = time.thread_time() - self._mark
        if used >= self.slice_s:
            pause = used * self.rest
            time.sleep(pause)
            self.rested += pause
            self._mark = time.thread_time()


def paced(items: Iterable[T], pace: Pace) -> Iterator[T]:
    """`items`, with `pace()` before each."""
    for item in items:
        pace()
        yield item
