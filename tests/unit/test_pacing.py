"""Pacing of background work that shares the worker's process (services/pacing.py)."""

from __future__ import annotations

import time

from jitaccess.services.pacing import Pace, paced


def _burn(seconds: float) -> int:
    """Use `seconds` of this thread's CPU; returns the loops it took."""
    until, loops = time.thread_time() + seconds, 0
    while time.thread_time() < until:
        loops += 1
    return loops


def test_a_step_after_a_slice_of_cpu_rests_as_long() -> None:
    pace = Pace(slice_s=0.002, rest=1.0)
    for _ in range(Pace.EVERY - 1):
        pace()  # the clock is looked at every EVERY steps only
    assert pace.rested == 0.0
    assert _burn(0.01) > 0
    started = time.monotonic()
    pace()
    assert pace.rested >= 0.01
    assert time.monotonic() - started >= 0.01  # it slept


def test_light_work_does_not_rest() -> None:
    pace = Pace(slice_s=10.0)
    assert list(paced(range(1000), pace)) == list(range(1000))
    assert pace.rested == 0.0


def test_paced_work_leaves_the_interpreter_to_other_threads_half_the_time() -> None:
    pace = Pace(slice_s=0.002, rest=1.0)
    started_cpu, started = time.thread_time(), time.monotonic()
    for _ in paced(range(10**9), pace):
        if time.thread_time() - started_cpu >= 0.05:
            break
    # 50 ms of CPU took at least ~100 ms: as long again was slept, in slices of ~2 ms.
    assert time.monotonic() - started >= 0.09
    assert pace.rested >= 0.04
