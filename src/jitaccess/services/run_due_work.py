"""Use case: the worker's step — expire stale requests, start scheduled grants, provision and
revoke in the targets, retry failures with backoff, and flag grants that keep failing.

Connector calls run outside any database transaction: an item is first *claimed* (its due time
pushed one lease ahead, so a crashed worker's items come back on their own), then the outcome
is applied in a second transaction that re-reads the row under lock. Outcomes are recorded as
they arrive: everything finished by then goes into one transaction (one audit append, one
commit), so a slow target delays only its own grants' records, and a batch costs a few commits
instead of one per grant. If that transaction fails, each outcome is recorded on its own.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from datetime import timedelta

from jitaccess.domain.model import EndReason, Grant, GrantState, retry_delay
from jitaccess.ports import (
    Clock,
    Connectors,
    PolicyVersion,
    SecretBox,
    UnitOfWork,
    UnitOfWorkFactory,
)
from jitaccess.services.approval_flow import announce_escalations
from jitaccess.services.context import audit
from jitaccess.services.grant_issuing import access_of, shares_access, target_of
from jitaccess.services.grant_outcomes import (
    Tally,
    describe,
    record_failure,
    record_provision,
    record_revoke,
    report_leftover_access,
)
from jitaccess.services.notify import notify

log = logging.getLogger("jitaccess.worker")


@dataclass(frozen=True)
class WorkerOptions:
    lease: timedelta = timedelta(seconds=30)
    batch: int = 200
    flag_after: timedelta = timedelta(minutes=5)
    retry_base: float = 0.5
    retry_cap: float = 60.0
    jitter: Callable[[], float] = random.random
    # How long a pass waits for its slowest connector calls. Calls still running then are left
    # to finish on their own and recorded when they do, so a target that hangs does not hold
    # up revocations on the others (their grants stay claimed by their lease meanwhile).
    straggler_wait: timedelta = timedelta(seconds=0.5)


@dataclass
class WorkReport:
    expired_requests: int = 0
    escalated: int = 0
    provisioned: int = 0
    ended: int = 0
    failures: int = 0
    flagged: int = 0
    errors: list[str] = field(default_factory=list)

    claimed: int = 0
    batch: int = 0
    # Connector calls of this pass still running when it moved on (recorded when they finish).
    left_running: int = 0

    @property
    def full(self) -> bool:
        """The pass took a whole batch, so more may be due right now."""
        return self.claimed >= self.batch or self.expired_requests >= self.batch

    @property
    def did_anything(self) -> bool:
        return bool(
            self.expired_requests
            or self.escalated
            or self.provisioned
            or self.ended
            or self.failures
        )


@dataclass(frozen=True)
class _Claim:
    grant: Grant
    policy: PolicyVersion
    # For a revoke: the other grants that hold the same access, so it stays in the target.
    retained_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Outcome:
    """What the target did with a claim: done (with sealed credentials, if it gave any), or
    failed with `error`."""

    claim: _Claim
    sealed: bytes | None = None
    error: Exception | None = None


def run_due_work(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    connectors: Connectors,
    box: SecretBox,
    options: WorkerOptions,
    executor: Executor | None = None,
) -> WorkReport:
    """One pass over everything due now; returns what happened."""
    work = _Pass(uow_factory, clock, connectors, box, options, WorkReport(batch=options.batch))
    claims = work.claim()
    if executor is None or len(claims) <= 1:
        work.record([o for claim in claims if (o := work.perform(claim)) is not None])
    else:
        running = {executor.submit(work.perform, claim) for claim in claims}
        deadline = time.monotonic() + options.straggler_wait.total_seconds()
        while running:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Whatever has finished by now, recorded together while the rest keep running.
            finished, running = wait(running, timeout=left, return_when=FIRST_COMPLETED)
            work.record(_results(finished))
        work.report.left_running = len(running)
        for future in running:
            future.add_done_callback(work.record_straggler)
    if work.unrecorded:
        # Nothing was lost (the leases bring those grants back), but the pass failed: let the
        # worker loop back off as it does for any database error.
        raise work.unrecorded[0]
    return work.report


@dataclass
class _Pass:
    uow_factory: UnitOfWorkFactory
    clock: Clock
    connectors: Connectors
    box: SecretBox
    options: WorkerOptions
    report: WorkReport
    unrecorded: list[Exception] = field(default_factory=list)

    def claim(self) -> list[_Claim]:
        claimed: list[Grant] = []
        claims: list[_Claim] = []
        with self.uow_factory() as uow:
            now = self.clock.now()
            current = uow.policies.current()
            for request in uow.requests.due(now, self.options.batch):
                if request.is_past_ttl(now):
                    request.expire(now)
                    audit(uow, now, "system", "request.expired", request.id)
                    notify(
                        uow, now, [request.requester], "expired", request.id, "no decision in time"
                    )
                    self.report.expired_requests += 1
                else:
                    version = uow.policies.get(request.policy_version) or current
                    if version is not None:
                        self.report.escalated += announce_escalations(
                            uow, version.policy, request, now
                        )
                    if request.due_at is not None and request.due_at <= now:
                        request.next_escalation_at = None  # nothing left to announce
                uow.requests.save(request)
            for grant in uow.grants.due(now, self.options.batch):
                if grant.state is not GrantState.REVOKING and grant.ends_at <= now:
                    # Past its end (the worker was down, or the target failed until now):
                    # never provision it; make sure nothing of it is left instead.
                    grant.begin_end(EndReason.EXPIRED, now, actor="system")
                elif grant.state is GrantState.SCHEDULED:
                    grant.start_activating(now)
                # Claim: push the due time one lease ahead; if this worker dies, it comes back.
                grant.next_attempt_at = now + self.options.lease
                uow.grants.save(grant)
                claimed.append(grant)
            if current is not None:
                # Asked once every claim is saved, so a grant ending in this same pass is not
                # taken for one that keeps the access.
                claims = [_Claim(g, current, self._holders(uow, g)) for g in claimed]
            uow.commit()
        self.report.claimed = len(claims)
        return claims

    @staticmethod
    def _holders(uow: UnitOfWork, grant: Grant) -> tuple[str, ...]:
        if grant.state is not GrantState.REVOKING or not shares_access(grant):
            return ()
        return tuple(g.id for g in uow.grants.holding(grant.access_key, exclude=grant.id))

    def perform(self, claim: _Claim) -> _Outcome | None:
        """The connector call, outside any transaction (on the executor's threads); None when
        the claim's lease ran out before the call could start (queued behind calls that hang):
        the grant is due again, and another pass may have claimed it."""
        grant = claim.grant
        if grant.next_attempt_at is not None and self.clock.now() >= grant.next_attempt_at:
            return None
        try:
            policy = claim.policy.policy
            access = access_of(policy, grant)
            connector = self.connectors.for_target(target_of(policy, grant.target))
            if grant.state is GrantState.ACTIVATING:
                credentials = connector.provision(access)
                if not credentials:
                    return _Outcome(claim)
                return _Outcome(claim, sealed=self.box.seal(json.dumps(credentials).encode()))
            if not claim.retained_by:
                connector.revoke(access)
            return _Outcome(claim)
        except Exception as error:  # any failure of a target is retried, never lost
            return _Outcome(claim, error=error)

    # --- recording ------------------------------------------------------------------------------

    def record_straggler(self, future: Future[_Outcome | None]) -> None:
        """A call the pass did not wait for has finished: record it now (on the executor's
        thread). Its pass has returned, so a failure to record is logged; the lease brings
        the grant back."""
        before = len(self.unrecorded)
        self.record(_results([future]))
        for error in self.unrecorded[before:]:
            log.warning("a slow connector call's outcome could not be recorded: %s", error)

    def record(self, outcomes: list[_Outcome]) -> None:
        """Record the outcomes in one transaction; if it fails, each on its own, so one that
        cannot be recorded does not take the others' with it."""
        if not outcomes:
            return
        for outcome in outcomes:
            if outcome.error is not None:
                self._count_failure(outcome)
        try:
            late = self._record_together(outcomes)
        except Exception as error:
            if len(outcomes) == 1:
                self._not_recorded(outcomes[0], error)
                return
            late = []
            for outcome in outcomes:
                try:
                    late += self._record_together([outcome])
                except Exception as alone:
                    self._not_recorded(outcome, alone)
        for claim, grant in late:
            try:
                self._remove_late_access(claim, grant)
            except Exception as error:  # its record is committed; this is the alarm only
                self.unrecorded.append(error)

    def _not_recorded(self, outcome: _Outcome, error: Exception) -> None:
        """Its record failed. If the target did its part, note a failure instead: the grant
        is retried with backoff (connectors are idempotent), as after a connector error."""
        if outcome.error is not None:
            self.unrecorded.append(error)
            return
        failed = _Outcome(outcome.claim, error=error)
        self._count_failure(failed)
        try:
            self._record_together([failed])  # a failure record has no late access to remove
        except Exception as again:
            self.unrecorded.append(again)

    def _count_failure(self, outcome: _Outcome) -> None:
        self.report.failures += 1
        self.report.errors.append(f"{outcome.claim.grant.id}: {describe(outcome.error)}")

    def _record_together(self, outcomes: Iterable[_Outcome]) -> list[tuple[_Claim, Grant]]:
        """One transaction; returns the grants whose access was made after they had ended."""
        tally = Tally()
        late: list[tuple[_Claim, Grant]] = []
        with self.uow_factory() as uow:
            now = self.clock.now()
            ordered = sorted(outcomes, key=lambda o: o.claim.grant.id)
            # One statement re-reads and locks them all (in id order: two workers recording
            # overlapping rows never deadlock).
            locked = uow.grants.lock_many(o.claim.grant.id for o in ordered)
            for outcome in ordered:
                claim = outcome.claim
                grant = locked.get(claim.grant.id)
                if grant is None:
                    continue
                if outcome.error is not None:
                    if grant.state is claim.grant.state:  # else someone else has moved it on
                        record_failure(
                            uow,
                            grant,
                            describe(outcome.error),
                            now,
                            tally,
                            retry_in=self._retry_in,
                            flag_after=self.options.flag_after,
                        )
                elif claim.grant.state is GrantState.ACTIVATING:
                    if record_provision(uow, grant, outcome.sealed, now, tally):
                        late.append((claim, grant))
                else:
                    record_revoke(uow, grant, claim.retained_by, now, tally)
            uow.commit()
        self.report.provisioned += tally.provisioned
        self.report.ended += tally.ended
        self.report.flagged += tally.flagged
        return late

    def _remove_late_access(self, claim: _Claim, grant: Grant) -> None:
        """Take away what we made for a grant that had already ended; if the target refuses,
        say so loudly (drift detection is the net that finds it later)."""
        policy = claim.policy.policy
        try:
            self.connectors.for_target(target_of(policy, grant.target)).revoke(
                access_of(policy, grant)
            )
            return
        except Exception as error:
            message = describe(error)[:500]
        with self.uow_factory() as uow:
            report_leftover_access(uow, policy, grant, self.clock.now(), message)
            uow.commit()

    def _retry_in(self, attempt: int) -> timedelta:
        o = self.options
        return retry_delay(attempt, base=o.retry_base, cap=o.retry_cap, jitter=o.jitter())


def _results(futures: Iterable[Future[_Outcome | None]]) -> list[_Outcome]:
    # A call cancelled by a shutting-down worker comes back when its lease runs out.
    return [o for f in futures if not f.cancelled() and (o := f.result()) is not None]
