"""Backoff of the worker's retries: exponential from `base`, capped at `cap`, jittered into
[50%, 100%] of the delay, and safe however long a target stays down."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.domain.model import GrantState, retry_delay
from support.lifecycle import Harness


def seconds(value: timedelta) -> float:
    return value.total_seconds()


def fake(h: Harness) -> FakeConnector:
    return h.connectors.for_target(h.policy.targets["demo"])


def test_retry_delay_doubles_from_the_base_with_each_attempt() -> None:
    delays = [seconds(retry_delay(attempt)) for attempt in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def test_retry_delay_stops_growing_at_the_cap() -> None:
    assert seconds(retry_delay(8)) == 60.0  # 64s would be past the 60s cap
    assert seconds(retry_delay(30)) == 60.0
    assert seconds(retry_delay(5, base=1.0, cap=10.0)) == 10.0
    assert seconds(retry_delay(4, base=1.0, cap=10.0)) == 8.0


def test_first_attempt_waits_the_base_even_when_counted_from_zero() -> None:
    assert retry_delay(0) == retry_delay(1) == timedelta(seconds=0.5)


@pytest.mark.parametrize(("jitter", "share"), [(0.0, 0.5), (0.5, 0.75), (1.0, 1.0)])
def test_jitter_scales_the_delay_between_half_and_all_of_it(jitter: float, share: float) -> None:
    assert seconds(retry_delay(3, jitter=jitter)) == pytest.approx(2.0 * share)


@given(
    attempt=st.integers(min_value=1, max_value=60),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    base=st.floats(min_value=0.01, max_value=10.0),
    cap=st.floats(min_value=1.0, max_value=3600.0),
)
def test_jittered_delay_stays_within_half_and_all_of_the_capped_delay(
    attempt: int, jitter: float, base: float, cap: float
) -> None:
    full = min(cap, base * 2 ** (attempt - 1))
    delay = seconds(retry_delay(attempt, base=base, cap=cap, jitter=jitter))
    assert full * 0.5 - 1e-6 <= delay <= full + 1e-6


@given(attempt=st.integers(min_value=1, max_value=60), jitter=st.floats(0.0, 1.0))
def test_delay_never_shrinks_from_one_attempt_to_the_next(attempt: int, jitter: float) -> None:
    assert retry_delay(attempt + 1, jitter=jitter) >= retry_delay(attempt, jitter=jitter)


@pytest.mark.parametrize("attempt", [1024, 1025, 2000, 100_000])
def test_delay_stays_at_the_cap_however_many_attempts_failed(attempt: int) -> None:
    # A target down for a long weekend fails a grant every minute: thousands of attempts.
    assert seconds(retry_delay(attempt)) == 60.0


def test_worker_backs_off_up_to_the_cap_while_the_target_is_down() -> None:
    h = Harness()
    fake(h).failing = True
    request = h.request("alice", "demo/read")
    (grant,) = h.grants_of(request)
    waits = []
    for _ in range(10):
        h.work()
        stored = h.grant(grant.id)
        assert stored.next_attempt_at is not None
        waits.append(seconds(stored.next_attempt_at - h.clock.now()))
        h.clock.advance(stored.next_attempt_at - h.clock.now())
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert h.grant(grant.id).attempts == 10


def test_worker_is_not_retried_before_the_backoff_has_passed() -> None:
    h = Harness()
    fake(h).failing = True
    request = h.request("alice", "demo/read")
    (grant,) = h.grants_of(request)
    h.work()
    h.work()
    h.clock.advance(timedelta(seconds=0.4))
    h.work()
    assert fake(h).calls == [("provision", grant.id)]
    h.clock.advance(timedelta(seconds=0.1))
    h.work()
    assert fake(h).calls == [("provision", grant.id)] * 2


def test_worker_keeps_retrying_a_grant_that_failed_thousands_of_times() -> None:
    h = Harness()
    fake(h).failing = True
    request = h.request("alice", "demo/read")
    (grant,) = h.grants_of(request)
    h.store.grants[grant.id].attempts = 2000  # a target down for about a day
    report = h.work()
    assert report.failures == 1
    stored = h.grant(grant.id)
    assert stored.state is GrantState.ACTIVATING
    assert stored.attempts == 2001
    assert stored.next_attempt_at == h.clock.now() + timedelta(seconds=60)
    fake(h).failing = False
    h.clock.advance(timedelta(seconds=60))
    h.work()
    assert h.grant(grant.id).state is GrantState.ACTIVE
