"""The worker's wake-up: rung only for something due before its planned wake-up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from jitaccess.adapters.db.unit_of_work import PROCESS_TOKEN, notify_payload, parse_payload
from jitaccess.adapters.wakeup import Wakeup

PLANNED = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def _sleeper(wakeup: Wakeup, ready: threading.Event) -> threading.Thread:
    def sleep() -> None:
        ready.set()
        wakeup.sleep_until(PLANNED, 10.0)

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    ready.wait(5)
    return thread


def _wait_planned(wakeup: Wakeup) -> None:
    # sleep_until records its plan before waiting; spin on that, not on time.
    while wakeup._planned is None:
        threading.Event().wait(0.001)


def test_a_ring_for_something_sooner_wakes_the_sleeper() -> None:
    wakeup = Wakeup()
    thread = _sleeper(wakeup, threading.Event())
    _wait_planned(wakeup)
    wakeup.ring(PLANNED - timedelta(seconds=1))
    thread.join(5)
    assert not thread.is_alive()


def test_a_ring_for_now_wakes_the_sleeper() -> None:
    wakeup = Wakeup()
    thread = _sleeper(wakeup, threading.Event())
    _wait_planned(wakeup)
    wakeup.ring()
    thread.join(5)
    assert not thread.is_alive()


def test_a_ring_for_something_later_lets_it_sleep() -> None:
    wakeup = Wakeup()
    thread = _sleeper(wakeup, threading.Event())
    _wait_planned(wakeup)
    wakeup.ring(PLANNED + timedelta(hours=3))
    thread.join(0.2)
    assert thread.is_alive()
    wakeup.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_ring_while_awake_is_kept_for_the_next_sleep() -> None:
    wakeup = Wakeup()
    wakeup.ring(PLANNED + timedelta(hours=3))  # nobody planned yet: the worker may be mid-pass
    done = threading.Event()

    def sleep() -> None:
        wakeup.sleep_until(PLANNED, 10.0)
        done.set()

    threading.Thread(target=sleep, daemon=True).start()
    assert done.wait(5)


def test_notifications_carry_the_sender_and_the_due_time() -> None:
    due = PLANNED + timedelta(minutes=5)
    assert parse_payload(notify_payload(due)) == (PROCESS_TOKEN, due)
    assert parse_payload(notify_payload(None)) == (PROCESS_TOKEN, None)
    assert parse_payload("other|not-a-time") == ("other", None)
