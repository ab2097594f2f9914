"""The rules for grants ending on their own (PRODUCT.md): expiry at the end and not before,
overlapping grants of one access counted, and a failing target retried until it confirms; one
test per rule, on a fake clock."""

from __future__ import annotations

from datetime import timedelta

from jitaccess.domain.model import GrantState
from jitaccess.services.check_access import check_access
from support.lifecycle import Harness, active_read_grant, fake, records

# --- expiry and reference counting ------------------------------------------------------------


def test_grant_expires_at_its_end_and_not_before() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    h.clock.advance(timedelta(minutes=59, seconds=59))
    report = h.work()
    assert report.ended == 0
    assert h.grant(grant_id).state is GrantState.ACTIVE
    assert fake(h).has("alice", "demo/read")
    h.clock.advance(timedelta(seconds=1))
    h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.EXPIRED
    assert grant.ended_at == grant.ends_at
    assert not fake(h).has("alice", "demo/read")
    (expired,) = records(h, "grant.expired")
    assert expired.entry.subject == grant_id


def test_grant_whose_end_passed_before_the_worker_ran_is_never_provisioned() -> None:
    h = Harness()
    request = h.request("alice", "demo/read", duration=timedelta(minutes=5))
    (grant,) = h.grants_of(request)
    h.clock.advance(timedelta(minutes=6))  # the worker was down the whole time
    h.work()
    assert ("provision", grant.id) not in fake(h).calls
    assert not fake(h).has("alice", "demo/read")
    with h.uow() as uow:
        check = check_access(uow, h.clock, principal="alice", role="demo/read")
    assert not check.active


def test_scheduled_grant_whose_window_passed_is_never_provisioned() -> None:
    h = Harness()
    request = h.request("alice", "demo/read", start_in=timedelta(hours=1))
    (grant,) = h.grants_of(request)
    h.clock.advance(timedelta(hours=3))
    h.work()
    assert ("provision", grant.id) not in fake(h).calls
    assert not fake(h).has("alice", "demo/read")
    h.work()
    assert h.grant(grant.id).state is GrantState.EXPIRED


def test_overlapping_grants_of_the_same_access_are_counted() -> None:
    h = Harness()
    first = active_read_grant(h)
    h.clock.advance(timedelta(minutes=30))
    second = active_read_grant(h)
    h.clock.advance(timedelta(minutes=30))
    h.work()
    assert h.grant(first).state is GrantState.EXPIRED
    assert h.grant(second).state is GrantState.ACTIVE
    assert fake(h).has("alice", "demo/read")
    (first_expired,) = records(h, "grant.expired")
    assert first_expired.entry.data["access_retained_by"] == [second]
    h.clock.advance(timedelta(minutes=30))
    h.work()
    assert h.grant(second).state is GrantState.EXPIRED
    assert not fake(h).has("alice", "demo/read")


def test_grant_is_marked_ended_only_after_the_target_confirmed() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    fake(h).failing = True
    h.clock.advance(timedelta(hours=1, seconds=1))
    h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.REVOKING
    assert grant.ended_at is None
    assert grant.attempts == 1
    assert grant.last_error is not None
    assert "fake target is down" in grant.last_error
    assert grant.flagged_at is None
    for _ in range(12):  # five minutes and more of retries
        h.clock.advance(timedelta(seconds=30))
        h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.REVOKING
    assert grant.attempts > 1
    assert grant.flagged_at is not None
    assert len(records(h, "grant.flagged")) == 1
    assert fake(h).has("alice", "demo/read")
    fake(h).failing = False
    h.clock.advance(timedelta(seconds=61))
    h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.EXPIRED
    assert grant.ended_at == h.clock.now()
    assert grant.flagged_at is None
    assert grant.attempts == 0
    assert not fake(h).has("alice", "demo/read")
    assert len(records(h, "grant.flagged")) == 1


def test_failed_provisioning_is_retried_with_growing_backoff_until_the_target_is_back() -> None:
    h = Harness()
    fake(h).failing = True
    request = h.request("alice", "demo/read")
    (grant,) = h.grants_of(request)
    delays = []
    for _ in range(4):
        h.work()
        grant = h.grant(grant.id)
        assert grant.state is GrantState.ACTIVATING
        assert grant.next_attempt_at is not None
        delays.append(grant.next_attempt_at - h.clock.now())
        h.clock.advance(delays[-1])
    assert delays == [timedelta(seconds=s) for s in (0.5, 1, 2, 4)]
    assert h.grant(grant.id).attempts == 4
    fake(h).failing = False
    h.work()
    grant = h.grant(grant.id)
    assert grant.state is GrantState.ACTIVE
    assert grant.attempts == 0
    assert grant.last_error is None
    assert fake(h).has("alice", "demo/read")
