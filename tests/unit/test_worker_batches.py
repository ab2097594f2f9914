"""The worker records the outcomes of a claimed batch together: one transaction for all that
have finished, each on its own if that fails. Each grant's outcome is recorded exactly once,
one grant's failure (in the target or in the database) costs the others nothing, and a slow
target holds up only its own grants' records."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pytest

from jitaccess.adapters.connectors.fake import FakeConnector, FakeConnectors
from jitaccess.adapters.memory import MemoryStore, MemoryUnitOfWork, MemoryUnitOfWorkFactory
from jitaccess.adapters.memory import _Grants as MemoryGrants
from jitaccess.audit.chain import verify
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.model import EndReason, Grant, GrantState
from jitaccess.domain.policy import Eligibility
from jitaccess.ports import Access
from jitaccess.services.run_due_work import WorkReport, run_due_work
from support.lifecycle import Harness, group, sample_policy, user

WAIT = 10.0  # seconds a test waits for the worker's threads before it gives up


class PickyConnector(FakeConnector):
    """Fails the calls of chosen grants; holds the provisioning of others until let go."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: set[str] = set()
        self.refuse_revoke: set[str] = set()
        self.held: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def _refuse(self, access: Access) -> None:
        if access.grant_id in self.refuse:
            raise ConnectorError(f"target refuses {access.grant_id}")

    def provision(self, access: Access) -> dict[str, str] | None:
        if access.grant_id in self.held:
            self.started.setdefault(access.grant_id, threading.Event()).set()
            assert self.held[access.grant_id].wait(WAIT), "never let go"
        self._refuse(access)
        return dict(super().provision(access) or {})

    def revoke(self, access: Access) -> None:
        self._refuse(access)
        if access.grant_id in self.refuse_revoke:
            raise ConnectorError(f"target keeps {access.grant_id}")
        super().revoke(access)


Poison = dict[str, Callable[[Grant], bool]]


class PoisonedGrants(MemoryGrants):
    """Grants whose saving fails, as a database error would, when `poisoned` says so."""

    def __init__(self, store: MemoryStore, poisoned: Poison) -> None:
        super().__init__(store)
        self.poisoned = poisoned

    def save(self, grant: Grant) -> None:
        if grant.id in self.poisoned and self.poisoned[grant.id](grant):
            raise RuntimeError(f"cannot write {grant.id}")
        super().save(grant)


class CountingFactory(MemoryUnitOfWorkFactory):
    """Counts committed transactions; can poison the saving of chosen grants."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.commits = 0
        self.poisoned: Poison = {}

    def __call__(self) -> MemoryUnitOfWork:
        uow = MemoryUnitOfWork(self.store)
        uow.grants = PoisonedGrants(self.store, self.poisoned)
        commit = uow.commit

        def counted() -> None:
            commit()
            self.commits += 1

        uow.commit = counted  # type: ignore[method-assign]
        return uow


def harness() -> tuple[Harness, PickyConnector, CountingFactory]:
    policy = sample_policy()
    everyone = Eligibility((group("engineers"), user("bob"), user("dan")), ("demo/read",))
    h = Harness(policy=replace(policy, eligibility=(everyone,)))
    picky = PickyConnector()
    h.connectors.connectors["demo"] = picky
    factory = CountingFactory(h.store)
    h.uow = factory
    return h, picky, factory


def asked(h: Harness, people: list[str]) -> list[str]:
    """Each person's demo/read grant, activating."""
    ids = []
    for who in people:
        (grant,) = h.grants_of(h.request(who, "demo/read"))
        ids.append(grant.id)
    return ids


def actions_of(h: Harness, grant_id: str) -> list[str]:
    return [r.entry.action for r in h.store.audit if r.entry.subject == grant_id]


def test_a_batch_is_recorded_in_one_transaction() -> None:
    h, _, factory = harness()
    ids = asked(h, ["alice", "bob"])
    before = factory.commits
    report = h.work()
    assert report.provisioned == 2
    assert factory.commits - before == 2  # the claim, then every outcome together
    assert {h.grant(g).state for g in ids} == {GrantState.ACTIVE}


def test_one_grant_failing_in_the_target_leaves_the_others_recorded_once() -> None:
    h, picky, _ = harness()
    good, bad = asked(h, ["alice", "bob"])
    picky.refuse.add(bad)
    report = h.work()
    assert (report.provisioned, report.failures) == (1, 1)
    assert h.grant(good).state is GrantState.ACTIVE
    failed = h.grant(bad)
    assert failed.state is GrantState.ACTIVATING
    assert failed.attempts == 1 and "target refuses" in (failed.last_error or "")
    assert failed.next_attempt_at == h.clock.now() + timedelta(seconds=0.5)
    # Expiry of both, the bad one now failing its revoke.
    picky.refuse.clear()
    h.clock.advance(timedelta(seconds=1))
    h.work()
    picky.refuse.add(bad)
    h.clock.advance(timedelta(hours=2))
    report = h.work()
    assert (report.ended, report.failures) == (1, 1)
    assert h.grant(good).state is GrantState.EXPIRED
    assert h.grant(bad).state is GrantState.REVOKING
    picky.refuse.clear()
    h.clock.advance(timedelta(seconds=1))
    assert h.work().ended == 1
    for grant_id in (good, bad):
        actions = actions_of(h, grant_id)
        assert actions.count("grant.provisioned") == 1, actions
        assert actions.count("grant.expired") == 1, actions
    assert verify(h.store.audit).ok


def test_a_record_that_cannot_be_written_does_not_lose_the_others() -> None:
    h, _, factory = harness()
    first, poisoned, last = asked(h, ["alice", "bob", "dan"])
    factory.poisoned[poisoned] = lambda grant: grant.state is GrantState.ACTIVE
    report = h.work()
    assert report.provisioned == 2
    assert h.grant(first).state is GrantState.ACTIVE
    assert h.grant(last).state is GrantState.ACTIVE
    # Provisioned in the target but not recorded: noted as a failure, retried with backoff.
    stuck = h.grant(poisoned)
    assert stuck.state is GrantState.ACTIVATING and stuck.attempts == 1
    assert "cannot write" in (stuck.last_error or "")
    assert report.failures == 1 and poisoned in report.errors[0]
    factory.poisoned.clear()
    h.clock.advance(timedelta(seconds=1))
    assert h.work().provisioned == 1
    assert h.grant(poisoned).state is GrantState.ACTIVE
    for grant_id in (first, poisoned, last):
        assert actions_of(h, grant_id).count("grant.provisioned") == 1
    assert verify(h.store.audit).ok


def test_a_failure_that_cannot_be_recorded_fails_the_pass_after_recording_the_rest() -> None:
    h, picky, factory = harness()
    good, bad = asked(h, ["alice", "bob"])
    picky.refuse.add(bad)
    factory.poisoned[bad] = lambda grant: grant.attempts > 0  # the failure's record
    with pytest.raises(RuntimeError, match="cannot write"):
        h.work()
    assert h.grant(good).state is GrantState.ACTIVE
    # Untouched: its claim's lease brings it back.
    lease = h.options.lease
    assert h.grant(bad).next_attempt_at == h.clock.now() + lease
    assert h.grant(bad).attempts == 0


def run_in_thread(work: Callable[[], WorkReport]) -> tuple[threading.Thread, list[WorkReport]]:
    reports: list[WorkReport] = []
    thread = threading.Thread(target=lambda: reports.append(work()))
    thread.start()
    return thread, reports


def wait_until(condition: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        done.wait(0.01)  # the worker's threads run meanwhile; no clock is involved
    raise AssertionError("timed out")


def test_a_slow_target_call_does_not_hold_up_recording_the_others() -> None:
    h, picky, _ = harness()
    slow, *quick = asked(h, ["alice", "bob", "dan"])
    picky.held[slow] = threading.Event()

    def state(grant_id: str) -> GrantState:
        with h.uow() as uow:
            grant = uow.grants.get(grant_id)
            assert grant is not None
            return grant.state

    # The pass waits for it (up to `straggler_wait`): every outcome in its report.
    h.options = replace(h.options, straggler_wait=timedelta(seconds=WAIT))
    with ThreadPoolExecutor(4) as executor:
        thread, reports = run_in_thread(
            lambda: run_due_work(h.uow, h.clock, h.connectors, h.box, h.options, executor)
        )
        wait_until(lambda: all(state(g) is GrantState.ACTIVE for g in quick))
        assert state(slow) is GrantState.ACTIVATING
        picky.held[slow].set()
        thread.join(WAIT)
    assert reports and reports[0].provisioned == 3
    assert state(slow) is GrantState.ACTIVE
    assert verify(h.store.audit).ok


def _state(h: Harness, grant_id: str) -> GrantState:
    with h.uow() as uow:
        grant = uow.grants.get(grant_id)
        assert grant is not None
        return grant.state


def test_a_pass_does_not_wait_for_a_call_that_hangs_and_records_it_when_it_returns() -> None:
    h, picky, _ = harness()
    h.options = replace(h.options, straggler_wait=timedelta(milliseconds=50))
    hanging, quick = asked(h, ["alice", "bob"])
    picky.held[hanging] = threading.Event()
    with ThreadPoolExecutor(4) as executor:
        report = run_due_work(h.uow, h.clock, h.connectors, h.box, h.options, executor)
        assert (report.provisioned, report.left_running) == (1, 1)
        assert _state(h, quick) is GrantState.ACTIVE
        assert _state(h, hanging) is GrantState.ACTIVATING
        # While it hangs, the next pass serves the other grants: a new one, and an end.
        (late,) = asked(h, ["dan"])
        h.end("bob", quick, EndReason.DEACTIVATED)
        report = run_due_work(h.uow, h.clock, h.connectors, h.box, h.options, executor)
        assert (report.provisioned, report.ended, report.left_running) == (1, 1, 0)
        assert _state(h, late) is GrantState.ACTIVE
        assert _state(h, quick) is GrantState.DEACTIVATED
        assert _state(h, hanging) is GrantState.ACTIVATING  # still claimed: its lease holds
        picky.held[hanging].set()
        wait_until(lambda: _state(h, hanging) is GrantState.ACTIVE)
    assert actions_of(h, hanging).count("grant.provisioned") == 1
    assert verify(h.store.audit).ok


def test_a_call_queued_past_its_lease_is_not_made_and_the_grant_comes_back() -> None:
    h, picky, _ = harness()
    h.options = replace(h.options, straggler_wait=timedelta(milliseconds=50))
    ids = asked(h, ["alice", "bob"])
    for grant_id in ids:
        picky.held[grant_id] = threading.Event()
    with ThreadPoolExecutor(1) as executor:  # the queued call waits behind the hanging one
        report = run_due_work(h.uow, h.clock, h.connectors, h.box, h.options, executor)
        assert report.left_running == 2
        wait_until(lambda: len(picky.started) == 1)
        (hanging,) = picky.started  # whichever the one thread took first
        (queued,) = set(ids) - {hanging}
        h.clock.advance(h.options.lease + timedelta(seconds=1))
        for event in picky.held.values():
            event.set()
        wait_until(lambda: _state(h, hanging) is GrantState.ACTIVE)
        executor.shutdown(wait=True)
    assert _state(h, queued) is GrantState.ACTIVATING  # skipped: its lease had run out
    assert ("provision", queued) not in picky.calls  # the queued call was never made
    assert h.work().provisioned == 1  # due again: provisioned once, by the next pass
    assert _state(h, queued) is GrantState.ACTIVE
    assert actions_of(h, queued).count("grant.provisioned") == 1
    assert verify(h.store.audit).ok


def test_a_revoke_waits_for_a_provision_in_flight_and_is_handed_on_in_the_batch() -> None:
    h, picky, _ = harness()
    slow, other = asked(h, ["alice", "bob"])
    picky.held[slow] = threading.Event()
    with ThreadPoolExecutor(4) as executor:
        thread, _ = run_in_thread(
            lambda: run_due_work(h.uow, h.clock, h.connectors, h.box, h.options, executor)
        )
        wait_until(lambda: picky.started.get(slow, threading.Event()).is_set())
        ended = h.end("alice", slow, EndReason.DEACTIVATED)
        # The provisioning worker's lease is kept: no other pass may revoke before it lands.
        assert ended.next_attempt_at == h.clock.now() + h.options.lease
        picky.held[slow].set()
        thread.join(WAIT)
    handed_on = h.grant(slow)
    assert handed_on.state is GrantState.REVOKING
    assert handed_on.next_attempt_at == h.clock.now()
    assert h.grant(other).state is GrantState.ACTIVE
    assert h.work().ended == 1
    assert h.grant(slow).state is GrantState.DEACTIVATED
    assert not picky.has("alice", "demo/read")
    assert actions_of(h, slow).count("grant.deactivated") == 1


class CountingHolding(MemoryGrants):
    asked: list[str] = []

    def holding(self, access_key: str, *, exclude: str) -> list[Grant]:
        CountingHolding.asked.append(exclude)
        return super().holding(access_key, exclude=exclude)


@pytest.mark.parametrize("per_grant_account", [False, True])
def test_who_else_holds_the_access_is_asked_only_when_grants_can_share_it(
    per_grant_account: bool,
) -> None:
    h = Harness(connectors=FakeConnectors(per_grant_account=per_grant_account))
    factory = MemoryUnitOfWorkFactory(h.store)

    def uow() -> MemoryUnitOfWork:
        unit = factory()
        unit.grants = CountingHolding(h.store)
        return unit

    h.uow = uow  # type: ignore[assignment]
    (grant,) = h.grants_of(h.request("alice", "demo/read"))
    h.work()
    CountingHolding.asked = []
    h.clock.advance(timedelta(hours=2))
    assert h.work().ended == 1
    assert h.grant(grant.id).state is GrantState.EXPIRED
    # Shared access: asked before the revoke and again after it (to restore a newcomer's).
    assert CountingHolding.asked == ([] if per_grant_account else [grant.id, grant.id])


@pytest.mark.parametrize("removal_fails", [False, True])
def test_access_made_after_the_grant_ended_elsewhere_is_taken_away_or_reported(
    removal_fails: bool,
) -> None:
    h, picky, _ = harness()
    (late,) = asked(h, ["alice"])
    picky.held[late] = threading.Event()
    with ThreadPoolExecutor(2) as executor:
        slow_pass, _ = run_in_thread(
            lambda: run_due_work(h.uow, h.clock, h.connectors, h.box, h.options, executor)
        )
        wait_until(lambda: picky.started.get(late, threading.Event()).is_set())
        # The slow pass outlives its lease; the grant is ended and another pass ends it.
        h.clock.advance(h.options.lease + timedelta(seconds=1))
        h.end("alice", late, EndReason.DEACTIVATED)
        assert h.work().ended == 1
        if removal_fails:
            picky.refuse_revoke.add(late)
        picky.held[late].set()
        slow_pass.join(WAIT)
    assert h.grant(late).state is GrantState.DEACTIVATED
    assert picky.has("alice", "demo/read") is removal_fails
    leftover = [r for r in h.store.audit if r.entry.action == "grant.leftover_access"]
    alerts = [n for n in h.store.notifications if n.kind == "leftover-access"]
    assert (len(leftover), len(alerts)) == ((1, 1) if removal_fails else (0, 0))
    assert actions_of(h, late).count("grant.provisioned") == 0
    assert verify(h.store.audit).ok


def test_memory_lock_many_returns_the_existing_grants_in_id_order() -> None:
    # The worker re-reads a batch with it (SQL: one SELECT ... FOR UPDATE, tested on storage).
    h, _, _ = harness()
    ids = sorted(asked(h, ["alice", "bob", "dan"]), reverse=True)
    with h.uow() as uow:
        locked = uow.grants.lock_many([*ids, "grt_missing", ids[0]])
        assert list(locked) == sorted(ids)
        assert locked[ids[1]] == h.grant(ids[1])
        assert locked[ids[1]] is not h.store.grants[ids[1]]  # a copy, as get() gives
        assert uow.grants.lock_many([]) == {}
