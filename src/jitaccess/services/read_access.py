"""Use case: read requests and grants, showing each viewer only what they may see.

Requesters see their own; approvers the requests of roles they approve; admins and auditors
all. Anything else looks exactly like a missing ID, and the attempt is audited.
"""

from __future__ import annotations

from jitaccess.domain import approvals
from jitaccess.domain.errors import NotFound
from jitaccess.domain.model import Grant, Request
from jitaccess.domain.policy import Policy
from jitaccess.ports import Clock, UnitOfWork
from jitaccess.services.context import current_policy, refuse


def _approver_of(policy: Policy, request: Request, viewer: str) -> bool:
    for name in request.roles:
        role = policy.roles.get(name)
        if role is None or role.approval is None:
            continue
        for stage in role.approval.stages:
            if policy.matches_any(viewer, stage.approvers + stage.escalate_to):
                return True
    return False


def may_see_request(policy: Policy, request: Request, viewer: str) -> bool:
    return (
        request.requester == viewer
        or policy.can_read_everything(viewer)
        or _approver_of(policy, request, viewer)
    )


def read_request(uow: UnitOfWork, clock: Clock, *, request_id: str, viewer: str) -> Request:
    policy = current_policy(uow).policy
    request = uow.requests.get(request_id)
    if request is None or not may_see_request(policy, request, viewer):
        error = NotFound(f"no request {request_id}")
        raise refuse(uow, clock.now(), viewer, "request.read", request_id[:64], error)
    return request


def list_requests(
    uow: UnitOfWork,
    clock: Clock,
    *,
    viewer: str,
    state: str | None = None,
    to_approve: bool = False,
    limit: int = 200,
) -> list[Request]:
    policy = current_policy(uow).policy
    now = clock.now()
    if to_approve:
        pending = uow.requests.list(state="pending", limit=10_000)
        return [r for r in pending if approvals.can_decide(policy, r, viewer, now)][:limit]
    if policy.can_read_everything(viewer):
        return uow.requests.list(state=state, limit=limit)
    candidates = uow.requests.list(state=state, limit=10_000)
    return [r for r in candidates if may_see_request(policy, r, viewer)][:limit]


def read_grant(uow: UnitOfWork, clock: Clock, *, grant_id: str, viewer: str) -> Grant:
    policy = current_policy(uow).policy
    grant = uow.grants.get(grant_id)
    if grant is None or not (grant.principal == viewer or policy.can_read_everything(viewer)):
        error = NotFound(f"no grant {grant_id}")
        raise refuse(uow, clock.now(), viewer, "grant.read", grant_id[:64], error)
    return grant


def list_grants(
    uow: UnitOfWork, *, viewer: str, state: str | None = None, limit: int = 200
) -> list[Grant]:
    policy = current_policy(uow).policy
    principal = None if policy.can_read_everything(viewer) else viewer
    return uow.grants.list(principal=principal, state=state, limit=limit)
