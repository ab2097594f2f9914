"""Recording what a target did with a grant the worker claimed — provisioned, revoked, or
failed — in the worker's recording transaction (run_due_work.py), on the row it re-read under
lock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from jitaccess.domain.model import ENDED_GRANT_STATES, EndReason, Grant, GrantState
from jitaccess.domain.policy import Policy
from jitaccess.ports import UnitOfWork
from jitaccess.services.context import audit
from jitaccess.services.grant_issuing import shares_access
from jitaccess.services.notify import notify


@dataclass
class Tally:
    """Counts of one recording transaction, added to the pass's report once it committed."""

    provisioned: int = 0
    ended: int = 0
    flagged: int = 0


def describe(error: Exception | None) -> str:
    return f"{type(error).__name__}: {error}"


def record_provision(
    uow: UnitOfWork, grant: Grant, sealed: bytes | None, now: datetime, tally: Tally
) -> bool:
    """Record a provision; True when the grant had ended meanwhile, so the access just made
    must be taken away again."""
    if grant.state is GrantState.REVOKING:
        # Ended while we provisioned: the revoke waited for us; it may run now.
        grant.next_attempt_at = now
        uow.grants.save(grant)
        uow.wake_worker()
        return False
    if grant.state is not GrantState.ACTIVATING:
        # Ended and confirmed meanwhile (our lease ran out)?
        return grant.state in ENDED_GRANT_STATES
    grant.mark_provisioned(now)
    uow.grants.save(grant)
    if sealed:
        uow.grants.set_credentials(grant.id, sealed)
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
    tally.provisioned += 1
    return False


def record_revoke(
    uow: UnitOfWork, grant: Grant, retained_by: tuple[str, ...], now: datetime, tally: Tally
) -> None:
    if grant.state is not GrantState.REVOKING:
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
        data["access_retained_by"] = list(retained_by)
    audit(
        uow,
        now,
        grant.ended_by or "system",
        f"grant.{grant.state.value}",
        grant.id,
        comment=grant.end_comment,
        data=data,
    )
    if not retained_by and shares_access(grant):
        # A grant for the same access may have become active while we revoked: restore it.
        for other in uow.grants.holding(grant.access_key, exclude=grant.id):
            if other.state is GrantState.ACTIVE:
                other.reprovision(now)
                uow.grants.save(other)
                uow.wake_worker()
    tally.ended += 1


def record_failure(
    uow: UnitOfWork,
    grant: Grant,
    message: str,
    now: datetime,
    tally: Tally,
    *,
    retry_in: Callable[[int], timedelta],
    flag_after: timedelta,
) -> None:
    """Note the failure and when to retry (`retry_in(attempt)`); flag it once it has kept
    failing for `flag_after`."""
    delay = retry_in(grant.attempts + 1)
    if grant.record_failure(now, message, retry_in=delay, flag_after=flag_after):
        tally.flagged += 1
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


def report_leftover_access(
    uow: UnitOfWork, policy: Policy, grant: Grant, now: datetime, message: str
) -> None:
    """Access was made for a grant that had already ended, and removing it failed."""
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
