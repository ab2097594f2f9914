"""Turning an approved request into grants (or, for an extension request, a longer grant)."""

from __future__ import annotations

from datetime import datetime

from jitaccess.domain.errors import Conflict, ConnectorError
from jitaccess.domain.model import Grant, GrantState, Request, new_id
from jitaccess.domain.policy import Policy, Target
from jitaccess.domain.rules import check_allowed_hours, check_max_active, extension_end
from jitaccess.ports import Access, Connectors, UnitOfWork
from jitaccess.services.context import audit


def access_key(
    connectors: Connectors, policy: Policy, grant_id: str, principal: str, role: str
) -> str:
    """Grants with the same key share access in the target and are reference-counted."""
    target = policy.roles[role].target
    if connectors.per_grant_account(policy.targets[target]):
        return _own_key(target, grant_id)
    return f"{target}|{principal}|{role}"


def _own_key(target: str, grant_id: str) -> str:
    return f"{target}|grant|{grant_id}"


def shares_access(grant: Grant) -> bool:
    """Whether other grants may hold this grant's access (no need to ask when its key names
    the grant itself)."""
    return grant.access_key != _own_key(grant.target, grant.id)


def target_of(policy: Policy, name: str) -> Target:
    target = policy.targets.get(name)
    if target is None:
        raise ConnectorError(f"target {name!r} is not in the policy in force")
    return target


def access_of(policy: Policy, grant: Grant) -> Access:
    role = policy.roles.get(grant.role)
    return Access(
        grant_id=grant.id,
        principal=grant.principal,
        role=grant.role,
        target=grant.target,
        grants=role.grants_dict() if role else {},
        starts_at=grant.starts_at,
        ends_at=grant.ends_at,
        params=dict(grant.params),
    )


def check_capacity(uow: UnitOfWork, policy: Policy, roles: tuple[str, ...]) -> None:
    """Refuse when a role already has `max_active` live grants. The role lock keeps two
    replicas from both taking the last place."""
    for name in roles:
        role = policy.roles[name]
        if role.max_active is not None:
            uow.lock_role(name)
            check_max_active(role, uow.grants.count_live(name))


def issue_grants(
    uow: UnitOfWork,
    connectors: Connectors,
    policy: Policy,
    request: Request,
    now: datetime,
    *,
    roles: tuple[str, ...] | None = None,
) -> list[Grant]:
    """Grants for `roles` (default: every role of the request), or the extension it asks for."""
    if request.extends_grant_id is not None:
        extend_existing(uow, connectors, policy, request, now)
        return []
    roles = request.roles if roles is None else roles
    check_capacity(uow, policy, roles)
    starts_at = max(request.start_at or now, now)
    if not request.break_glass:
        # Approval may come hours after the ask: the window holds when the grant starts.
        check_allowed_hours(tuple(policy.roles[name] for name in roles), starts_at)
    grants = []
    for role_name in roles:
        grant_id = new_id("grt")
        grant = Grant(
            id=grant_id,
            request_id=request.id,
            principal=request.requester,
            role=role_name,
            target=policy.roles[role_name].target,
            access_key=access_key(connectors, policy, grant_id, request.requester, role_name),
            starts_at=starts_at,
            ends_at=starts_at + request.duration,
            created_at=now,
            params=dict(request.params),
        )
        if starts_at <= now:
            grant.start_activating(now)
        uow.grants.add(grant)
        request.grant_ids.append(grant.id)
        audit(
            uow,
            now,
            "system",
            "grant.scheduled" if grant.state is GrantState.SCHEDULED else "grant.created",
            grant.id,
            data={
                "request": request.id,
                "principal": grant.principal,
                "role": grant.role,
                "starts_at": grant.starts_at.isoformat(),
                "ends_at": grant.ends_at.isoformat(),
            },
        )
        grants.append(grant)
        uow.wake_worker(grant.due_at)
    return grants


def extend_existing(
    uow: UnitOfWork, connectors: Connectors, policy: Policy, request: Request, now: datetime
) -> Grant:
    """Apply an extension: move the end in the target first (a failure changes nothing)."""
    assert request.extends_grant_id is not None
    grant = uow.grants.get(request.extends_grant_id, for_update=True)
    if grant is None or not grant.is_live or grant.state is GrantState.REVOKING:
        raise Conflict(f"grant {request.extends_grant_id} is no longer live; nothing to extend")
    role = policy.roles[grant.role]
    new_end = extension_end(role, grant.starts_at, grant.ends_at, request.duration)
    old_end = grant.ends_at
    grant.extend_to(new_end)
    if grant.state is GrantState.ACTIVE:
        connectors.for_target(target_of(policy, grant.target)).extend(access_of(policy, grant))
    uow.grants.save(grant)
    audit(
        uow,
        now,
        request.requester,
        "grant.extended",
        grant.id,
        justification=request.justification,
        ticket=request.ticket,
        data={"request": request.id, "from": old_end.isoformat(), "to": new_end.isoformat()},
    )
    # No wake-up: an extension only moves an end later, so the worker's plan is early enough.
    return grant
