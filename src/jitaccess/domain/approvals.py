"""How decisions count: serial stages, quorum of distinct people, all-groups, deny thresholds,
escalation, and separation of duties. Every approval rule of the product lives in this file.
"""

from __future__ import annotations

from datetime import datetime

from jitaccess.domain.errors import Forbidden, SelfApproval
from jitaccess.domain.model import Approval, Decision, Request, StageMark
from jitaccess.domain.policy import Policy, Role, Stage


def _marks(request: Request, role: str, stage: int, decision: Decision) -> list[Approval]:
    mark = StageMark(role, stage)
    return [a for a in request.approvals if a.decision is decision and mark in a.counted_for]


def stage_complete(policy: Policy, stage: Stage, approvals: list[Approval]) -> bool:
    people = {a.approver for a in approvals}
    if len(people) < stage.min_approvals:
        return False
    if stage.all_groups:
        groups = [ref.name for ref in stage.approvers if ref.kind == "group"]
        return all(any(g in policy.groups_of(p) for p in people) for g in groups)
    return True


def open_stage(policy: Policy, request: Request, role: Role) -> int | None:
    """Index of the first stage of `role` not yet complete, or None when all are."""
    if role.approval is None:
        return None
    for index, stage in enumerate(role.approval.stages):
        if not stage_complete(policy, stage, _marks(request, role.name, index, Decision.APPROVE)):
            return index
    return None


def stage_opened_at(request: Request, role: Role, index: int) -> datetime:
    """Stage 0 opens with the request; a later one with the decision that completed the last."""
    if index == 0:
        return request.created_at
    previous = _marks(request, role.name, index - 1, Decision.APPROVE)
    return max(a.at for a in previous) if previous else request.created_at


def may_decide_stage(
    policy: Policy, request: Request, role: Role, index: int, principal: str, now: datetime
) -> bool:
    assert role.approval is not None
    stage = role.approval.stages[index]
    escalated = (
        stage.escalate_after is not None
        and now >= stage_opened_at(request, role, index) + stage.escalate_after
    )
    if not policy.matches_any(principal, policy.stage_approvers(stage, escalated=escalated)):
        return False
    # Separation of duties: nobody approves two stages of one request.
    return not any(
        StageMark(role.name, other) in a.counted_for
        for a in request.approvals
        if a.approver == principal
        for other in range(len(role.approval.stages))
    )


def count_decision(
    policy: Policy, request: Request, principal: str, now: datetime
) -> tuple[StageMark, ...]:
    """The open stages this principal's decision counts for; refuse when it counts for none."""
    if principal == request.requester:
        raise SelfApproval(
            f"{principal} requested {request.id} and cannot decide on it", rule="self-approval"
        )
    marks = []
    for role_name in request.roles:
        role = policy.roles.get(role_name)
        if role is None:
            continue
        index = open_stage(policy, request, role)
        if index is not None and may_decide_stage(policy, request, role, index, principal, now):
            marks.append(StageMark(role_name, index))
    if not marks:
        raise Forbidden(
            f"{principal} is not an approver of any open stage of request {request.id}",
            rule="not-an-approver",
        )
    return tuple(marks)


def can_decide(policy: Policy, request: Request, principal: str, now: datetime) -> bool:
    try:
        count_decision(policy, request, principal, now)
    except Forbidden:
        return False
    return not request.has_decided(principal)


def is_denied(policy: Policy, request: Request) -> bool:
    for role_name in request.roles:
        role = policy.roles.get(role_name)
        if role is None or role.approval is None:
            continue
        for index, stage in enumerate(role.approval.stages):
            denials = {a.approver for a in _marks(request, role_name, index, Decision.DENY)}
            if len(denials) >= stage.deny_threshold:
                return True
    return False


def is_fully_approved(policy: Policy, request: Request) -> bool:
    return all(
        open_stage(policy, request, policy.roles[r]) is None
        for r in request.roles
        if r in policy.roles
    ) and all(r in policy.roles for r in request.roles)


def needs_approval(policy: Policy, roles: tuple[str, ...]) -> bool:
    return any(policy.roles[r].approval is not None for r in roles)
