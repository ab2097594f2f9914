"""Use case: drift — compare what each target really holds with the grants that explain it.

For each target of the policy in force: `list_access(governed)` outside any transaction, then
- access no live grant explains is recorded as an `unexplained` finding (audited and the
  admins notified once, when first seen) and, where the target says `drift: remove`, taken
  away with the connector's `remove` (audited again);
- an active grant whose access the target no longer has is a `missing` finding: the grant is
  put back to `activating`, so the worker provisions it again (and retries, then flags it,
  if the target refuses);
- an open finding no longer seen is closed as `gone` (someone fixed it by hand).
Targets whose connector cannot list (`can_list = False`, e.g. a webhook without a list URL)
are skipped. Also records each target's health (`check()`), for GET /api/v1/targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from jitaccess.domain.model import Grant, GrantState, new_id
from jitaccess.domain.policy import DriftAction, Policy, Target
from jitaccess.ports import (
    Clock,
    Connector,
    Connectors,
    DriftFinding,
    ExistingAccess,
    TargetHealth,
    UnitOfWorkFactory,
)
from jitaccess.services.context import audit, current_policy
from jitaccess.services.grant_issuing import access_of
from jitaccess.services.notify import notify
from jitaccess.services.pacing import Pace, paced

MAX_ERROR = 500


@dataclass
class TargetReport:
    target: str
    ok: bool = True
    error: str | None = None
    listed: int = 0
    unexplained: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # grant ids put back to provisioning
    skipped: bool = False


@dataclass
class ReconcileReport:
    targets: list[TargetReport] = field(default_factory=list)

    @property
    def unexplained(self) -> int:
        return sum(len(t.unexplained) for t in self.targets)

    @property
    def removed(self) -> int:
        return sum(len(t.removed) for t in self.targets)

    @property
    def missing(self) -> int:
        return sum(len(t.missing) for t in self.targets)


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:MAX_ERROR]


def check_targets(
    uow_factory: UnitOfWorkFactory, clock: Clock, connectors: Connectors
) -> list[TargetHealth]:
    """Run every target's health check now and record the outcome."""
    with uow_factory() as uow:
        policy = current_policy(uow).policy
        previous = {h.target: h for h in uow.ops.health()}
    results = []
    for target in policy.targets.values():
        try:
            connectors.for_target(target).check()
            ok, error = True, None
        except Exception as exc:  # a broken target is reported, never fatal
            ok, error = False, _error(exc)
        before = previous.get(target.name)
        results.append(
            TargetHealth(
                target.name,
                target.type,
                clock.now(),
                ok,
                error,
                before.reconciled_at if before else None,
            )
        )
    with uow_factory() as uow:
        for health in results:
            uow.ops.save_health(health)
        uow.commit()
    return results


def reconcile(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    connectors: Connectors,
    *,
    actor: str = "system",
    only: Sequence[str] = (),
) -> ReconcileReport:
    with uow_factory() as uow:
        policy = current_policy(uow).policy
    report = ReconcileReport()
    pace = Pace()
    for target in policy.targets.values():
        if only and target.name not in only:
            continue
        report.targets.append(
            _reconcile_target(uow_factory, clock, connectors, policy, target, actor, pace)
        )
    return report


def _reconcile_target(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    connectors: Connectors,
    policy: Policy,
    target: Target,
    actor: str,
    pace: Pace,
) -> TargetReport:
    """The heavy loops (every live grant of the target, every account it lists) are `paced`:
    this runs beside the worker's revocations, in its process."""
    result = TargetReport(target.name)
    governed = [r.grants_dict() for r in policy.roles.values() if r.target == target.name]
    try:
        connector = connectors.for_target(target)
        if not getattr(connector, "can_list", True):
            result.skipped = True
            return result
        # Only grants active before the listing can be missing from it (one provisioned
        # while it ran is not).
        with uow_factory() as uow:
            active_before = {
                g.id
                for g in paced(uow.grants.iter_live_on(target.name), pace)
                if g.state is GrantState.ACTIVE
            }
        existing = connector.list_access(governed)
    except Exception as exc:
        result.ok, result.error = False, _error(exc)
        _record_health(uow_factory, clock, target, result)
        return result
    result.listed = len(existing)
    with uow_factory() as uow:
        now = clock.now()
        # Grants are read one at a time and only their ids and accounts kept (strings, which
        # the garbage collector does not walk): holding 100,000 Grant objects made the full
        # collections that followed pause the whole process, revocations included.
        explained_ids: set[str] = set()
        explained_accounts: set[str] = set()
        could_be_missing: list[_Held] = []
        for grant in paced(uow.grants.iter_live_on(target.name), pace):
            accounts = tuple(_accounts(connector, policy, grant))
            explained_ids.add(grant.id)
            explained_accounts.update(accounts)
            if grant.state is GrantState.ACTIVE and grant.id in active_before:
                could_be_missing.append(_Held(grant.id, grant.principal, grant.role, accounts))
        unexplained = [
            e
            for e in paced(existing, pace)
            if (e.grant_id is None or e.grant_id not in explained_ids)
            and e.account not in explained_accounts
        ]
        present_ids = {e.grant_id for e in existing if e.grant_id}
        present_accounts = {e.account for e in existing}
        missing = [
            g
            for g in could_be_missing
            if g.id not in present_ids and not set(g.accounts) <= present_accounts
        ]
        findings = {(f.kind, f.account): f for f in uow.drift.open_for(target.name)}
        seen: set[tuple[str, str]] = set()
        fresh: list[ExistingAccess] = []
        for entry in unexplained:
            key = ("unexplained", entry.account)
            seen.add(key)
            result.unexplained.append(entry.account)
            finding = findings.get(key)
            if finding is not None:
                finding.last_seen_at = now
                uow.drift.save(finding)
                continue
            fresh.append(entry)
            uow.drift.add(
                DriftFinding(
                    id=new_id("drf"),
                    target=target.name,
                    kind="unexplained",
                    account=entry.account,
                    principal=entry.principal,
                    grant_id=entry.grant_id,
                    detail=dict(entry.detail),
                    found_at=now,
                    last_seen_at=now,
                )
            )
            audit(
                uow,
                now,
                actor,
                "drift.found",
                f"{target.name}:{entry.account}"[:300],
                data={
                    "target": target.name,
                    "account": entry.account,
                    "principal": entry.principal,
                    "grant": entry.grant_id,
                    "action": target.drift.value,
                },
            )
        if fresh:
            notify(
                uow,
                now,
                policy.people(policy.admins),
                "drift",
                target.name,
                f"{len(fresh)} access entr{'y' if len(fresh) == 1 else 'ies'} in {target.name} "
                f"no grant explains: {', '.join(e.account for e in fresh[:5])}",
                data={"accounts": [e.account for e in fresh]},
            )
        for held in missing:
            key = ("missing", held.id)
            seen.add(key)
            locked = uow.grants.get(held.id, for_update=True)
            if locked is None or locked.state is not GrantState.ACTIVE:
                continue
            locked.reprovision(now)
            uow.grants.save(locked)
            uow.wake_worker()
            result.missing.append(held.id)
            uow.drift.add(
                DriftFinding(
                    id=new_id("drf"),
                    target=target.name,
                    kind="missing",
                    account=held.id,
                    principal=held.principal,
                    grant_id=held.id,
                    detail={"role": held.role},
                    found_at=now,
                    last_seen_at=now,
                    state="repaired",
                    resolved_at=now,
                )
            )
            audit(
                uow,
                now,
                actor,
                "drift.missing",
                held.id,
                data={"target": target.name, "role": held.role, "action": "reprovision"},
            )
        for key, finding in findings.items():
            if key not in seen:
                finding.state, finding.resolved_at = "gone", now
                uow.drift.save(finding)
                audit(uow, now, actor, "drift.resolved", f"{target.name}:{finding.account}"[:300])
        uow.commit()
    if target.drift is DriftAction.REMOVE:
        for entry in unexplained:
            _remove(uow_factory, clock, connector, target, entry, actor, result)
    _record_health(uow_factory, clock, target, result, reconciled=True)
    return result


class _Held(NamedTuple):
    """What reconcile keeps of an active grant while it compares (see _reconcile_target)."""

    id: str
    principal: str
    role: str
    accounts: tuple[str, ...]


def _accounts(connector: Connector, policy: Policy, grant: Grant) -> list[str]:
    """Every account a grant's access shows up as (a role may grant several LDAP groups)."""
    access = access_of(policy, grant)
    several = getattr(connector, "accounts_of", None)
    if callable(several):
        return list(several(access))
    return [connector.account_of(access)]


def _remove(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    connector: Connector,
    target: Target,
    entry: ExistingAccess,
    actor: str,
    result: TargetReport,
) -> None:
    try:
        connector.remove(entry)
    except Exception as exc:
        result.ok, result.error = False, _error(exc)
        return
    result.removed.append(entry.account)
    with uow_factory() as uow:
        now = clock.now()
        for finding in uow.drift.open_for(target.name):
            if finding.kind == "unexplained" and finding.account == entry.account:
                finding.state, finding.resolved_at = "removed", now
                uow.drift.save(finding)
        audit(
            uow,
            now,
            actor,
            "drift.removed",
            f"{target.name}:{entry.account}"[:300],
            data={"target": target.name, "account": entry.account, "principal": entry.principal},
        )
        uow.commit()


def _record_health(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    target: Target,
    result: TargetReport,
    *,
    reconciled: bool = False,
) -> None:
    with uow_factory() as uow:
        now = clock.now()
        previous = next((h for h in uow.ops.health() if h.target == target.name), None)
        if result.ok and previous is not None:
            # A listing that worked says nothing about the admin's other rights: keep what the
            # last health check found, and note when the target was reconciled.
            health = TargetHealth(
                target.name,
                target.type,
                previous.checked_at,
                previous.ok,
                previous.error,
                now if reconciled else previous.reconciled_at,
            )
        else:
            health = TargetHealth(
                target.name,
                target.type,
                now,
                result.ok,
                result.error,
                now if reconciled else (previous.reconciled_at if previous else None),
            )
        uow.ops.save_health(health)
        uow.commit()
