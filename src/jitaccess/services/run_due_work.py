"""Use case: the worker's step — expire stale requests, start scheduled grants, provision and
revoke in the targets, retry failures with backoff, and flag grants that keep failing.

Connector calls run outside any database transaction: an item is first *claimed* (its due time
pushed one lease ahead, so a crashed worker's items come back on their own), then the outcome
is applied in a second transaction that re-reads the row under lock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jitaccess.domain.model import ENDED_GRANT_STATES, EndReason, Grant, GrantState, retry_delay
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
from jitaccess.services.grant_issuing import access_of, target_of
from jitaccess.services.notify import notify


@dataclass(frozen=True)
class WorkerOptions:
    lease: timedelta = timedelta(seconds=30)
    batch: int = 200
    flag_after: timedelta = timedelta(minutes=5)
    retry_base: float = 0.5
    retry_cap: float = 60.0
    jitter: Callable[[], float] = random.random


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
        for claim in claims:
            work.perform(claim)
    else:
        for future in [executor.submit(work.perform, c) for c in claims]:
            future.result()
    return work.report


@dataclass
class _Pass:
    uow_factory: UnitOfWorkFactory
    clock: Clock
    connectors: Connectors
    box: SecretBox
    options: WorkerOptions
    report: WorkReport

    def claim(self) -> list[_Claim]:
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
                if current is not None:
                    claims.append(_Claim(grant, current))
            uow.commit()
        self.report.claimed = len(claims)
        return claims

    def perform(self, claim: _Claim) -> None:
        grant = claim.grant
        access = access_of(claim.policy.policy, grant)
        try:
            connector = self.connectors.for_target(target_of(claim.policy.policy, grant.target))
            if grant.state is GrantState.ACTIVATING:
                self._after_provision(claim, connector.provision(access))
            else:
                retained_by = self._holders(grant)
                if not retained_by:
                    connector.revoke(access)
                self._after_revoke(claim, retained_by)
        except Exception as error:  # any failure of a target is retried, never lost
            self._after_failure(grant, error)

    def _holders(self, grant: Grant) -> list[str]:
        with self.uow_factory() as uow:
            return [g.id for g in uow.grants.holding(grant.access_key, exclude=grant.id)]

    def _after_provision(self, claim: _Claim, credentials: Mapping[str, str] | None) -> None:
        with self.uow_factory() as uow:
            now = self.clock.now()
            grant = uow.grants.get(claim.grant.id, for_update=True)
            if grant is not None and grant.state is GrantState.REVOKING:
                # Ended while we provisioned: the revoke waited for us; it may run now.
                grant.next_attempt_at = now
                uow.grants.save(grant)
                uow.wake_worker()
                uow.commit()
                return
            if grant is None or grant.state is not GrantState.ACTIVATING:
                if grant is not None and grant.state in ENDED_GRANT_STATES:
                    # Ended and confirmed meanwhile (our lease ran out): take away what we just
                    # made, and if the target refuses, say so loudly; drift detection is the
                    # net that finds it later.
                    self._remove_late_access(uow, claim, grant, now)
                return
            grant.mark_provisioned(now)
            uow.grants.save(grant)
            if credentials:
                uow.grants.set_credentials(
                    grant.id, self.box.seal(json.dumps(credentials).encode())
                )
            audit(
                uow,
                now,
                "system",
                "grant.provisioned",
                grant.id,
                data={
                    "principal": grant.principal,
                    "role": grant.role,
                    "ends_at": grant.ends_at.isoformat(),
                },
            )
            if grant.is_ending:  # provisioning outlasted the grant: revoke right away
                uow.wake_worker()
            uow.commit()
            self.report.provisioned += 1

    def _remove_late_access(
        self, uow: UnitOfWork, claim: _Claim, grant: Grant, now: datetime
    ) -> None:
        policy = claim.policy.policy
        try:
            self.connectors.for_target(target_of(policy, grant.target)).revoke(
                access_of(policy, grant)
            )
        except Exception as error:
            message = f"{type(error).__name__}: {error}"[:500]
            audit(
                uow,
                now,
                "system",
                "grant.leftover_access",
                grant.id,
                comment="provisioned after the grant ended; removing it failed: " + message,
                data={"principal": grant.principal, "role": grant.role, "target": grant.target},
            )
            notify(
                uow,
                now,
                policy.people(policy.admins),
                "leftover-access",
                grant.id,
                f"access of ended grant {grant.id} ({grant.principal}, {grant.role}) may remain in "
                f"{grant.target}: {message}; `jitaccess reconcile` finds and removes it",
            )
            uow.commit()

    def _after_revoke(self, claim: _Claim, retained_by: list[str]) -> None:
        with self.uow_factory() as uow:
            now = self.clock.now()
            grant = uow.grants.get(claim.grant.id, for_update=True)
            if grant is None or grant.state is not GrantState.REVOKING:
                return
            grant.confirm_ended(now)
            uow.grants.save(grant)
            uow.grants.drop_credentials(grant.id)
            data: dict[str, object] = {
                "principal": grant.principal,
                "role": grant.role,
                "ends_at": grant.ends_at.isoformat(),
            }
            if grant.end_reason is EndReason.EXPIRED:
                data["lag_ms"] = max(0, int((now - grant.ends_at).total_seconds() * 1000))
            if retained_by:
                data["access_retained_by"] = retained_by
            audit(
                uow,
                now,
                grant.ended_by or "system",
                f"grant.{grant.state.value}",
                grant.id,
                comment=grant.end_comment,
                data=data,
            )
            if not retained_by:
                # A grant for the same access may have become active while we revoked: restore it.
                for other in uow.grants.holding(grant.access_key, exclude=grant.id):
                    if other.state is GrantState.ACTIVE:
                        other.reprovision(now)
                        uow.grants.save(other)
                        uow.wake_worker()
            uow.commit()
            self.report.ended += 1

    def _after_failure(self, claimed: Grant, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        self.report.failures += 1
        self.report.errors.append(f"{claimed.id}: {message}")
        with self.uow_factory() as uow:
            now = self.clock.now()
            grant = uow.grants.get(claimed.id, for_update=True)
            if grant is None or grant.state is not claimed.state:
                return
            delay = retry_delay(
                grant.attempts + 1,
                base=self.options.retry_base,
                cap=self.options.retry_cap,
                jitter=self.options.jitter(),
            )
            if grant.record_failure(
                now, message, retry_in=delay, flag_after=self.options.flag_after
            ):
                self.report.flagged += 1
                audit(
                    uow,
                    now,
                    "system",
                    "grant.flagged",
                    grant.id,
                    comment=f"{grant.state.value} keeps failing; retrying continues",
                    data={"attempts": grant.attempts, "error": grant.last_error},
                )
            uow.grants.save(grant)
            uow.commit()
