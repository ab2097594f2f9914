"""Use case: a principal asks for one or more roles for a while, with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from jitaccess.domain import approvals
from jitaccess.domain.durations import format_duration
from jitaccess.domain.errors import JitAccessError
from jitaccess.domain.model import Request, new_id
from jitaccess.domain.policy import Policy, Role, Stage
from jitaccess.domain.rules import (
    check_eligible,
    check_requirements,
    check_start,
    effective_duration,
    pending_deadline,
    resolve_roles,
)
from jitaccess.ports import Clock, Connectors, UnitOfWork
from jitaccess.services.context import audit, current_policy, refuse
from jitaccess.services.grant_issuing import issue_grants


@dataclass(frozen=True)
class StagePreview:
    role: str
    stage: str
    approvers: tuple[str, ...]
    min_approvals: int


@dataclass(frozen=True)
class RequestPreview:
    """What a request would need, for `--dry-run`."""

    roles: tuple[str, ...]
    duration: timedelta
    starts_at: datetime
    needs_approval: bool
    stages: tuple[StagePreview, ...]


def request_access(
    uow: UnitOfWork,
    clock: Clock,
    connectors: Connectors,
    *,
    requester: str,
    roles: list[str],
    duration: timedelta | None,
    justification: str,
    ticket: str | None = None,
    start_at: datetime | None = None,
    dry_run: bool = False,
) -> Request | RequestPreview:
    now = clock.now()
    version = current_policy(uow)
    policy = version.policy
    ticket = ticket or None
    try:
        resolved = resolve_roles(policy, roles)
        check_eligible(policy, requester, resolved, now)
        asked = effective_duration(resolved, duration)
        check_requirements(resolved, justification, ticket)
        starts_at = check_start(start_at, now)
    except JitAccessError as error:
        if dry_run:
            raise
        raise refuse(
            uow,
            now,
            requester,
            "request.create",
            ",".join(roles),
            error,
            data={"roles": list(roles)},
        ) from None
    if dry_run:
        return preview(policy, tuple(roles), asked, starts_at)

    request = Request(
        id=new_id("req"),
        requester=requester,
        roles=tuple(roles),
        duration=asked,
        justification=justification,
        ticket=ticket,
        created_at=now,
        policy_version=version.version,
        start_at=start_at,
        pending_until=pending_deadline(resolved, now),
    )
    audit(
        uow,
        now,
        requester,
        "request.created",
        request.id,
        justification=justification,
        ticket=ticket,
        data={
            "roles": list(request.roles),
            "duration": format_duration(asked),
            "start_at": start_at.isoformat() if start_at else None,
            "policy_version": version.version,
        },
    )
    if not approvals.needs_approval(policy, request.roles):
        request.approve(now)
        audit(
            uow,
            now,
            "system",
            "request.approved",
            request.id,
            data={"rule": "no approval required"},
        )
        uow.requests.add(request)
        issue_grants(uow, connectors, policy, request, now)
        uow.requests.save(request)
    else:
        uow.requests.add(request)
        uow.wake_worker(request.pending_until)  # its pending TTL may be the nearest event
    uow.commit()
    return request


def _stages(role: Role) -> tuple[Stage, ...]:
    return role.approval.stages if role.approval else ()


def preview(
    policy: Policy, roles: tuple[str, ...], duration: timedelta, starts_at: datetime
) -> RequestPreview:
    stages = tuple(
        StagePreview(
            role=name,
            stage=stage.name,
            approvers=tuple(str(ref) for ref in stage.approvers),
            min_approvals=stage.min_approvals,
        )
        for name in roles
        for stage in _stages(policy.roles[name])
    )
    return RequestPreview(roles, duration, starts_at, bool(stages), stages)
