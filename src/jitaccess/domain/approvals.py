"""How decisions count: serial stages, quorum of distinct people, all-groups, deny thresholds,
escalation, separation of duties, bundles (with `partial`), auto-approval and break-glass.
Every approval rule of the product lives in this file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from jitaccess.domain.errors import Conflict, Forbidden, SelfApproval
from jitaccess.domain.model import Approval, Decision, Request, StageMark
from jitaccess.domain.policy import AutoApproveRule, Policy, Role, Stage


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


def _settled_without_people(request: Request, role: Role) -> bool:
    """Approved without any stage: no approval configured, auto-approved, or break-glass."""
    return role.approval is None or role.name in request.auto_approved or request.break_glass


def open_stage(policy: Policy, request: Request, role: Role) -> int | None:
    """Index of the first stage of `role` not yet complete, or None when all are."""
    if role.approval is None or _settled_without_people(request, role):
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


def escalates_at(request: Request, role: Role, index: int) -> datetime | None:
    assert role.approval is not None
    after = role.approval.stages[index].escalate_after
    return None if after is None else stage_opened_at(request, role, index) + after


def _approver_of_stage(
    policy: Policy, request: Request, role: Role, index: int, principal: str, now: datetime
) -> bool:
    assert role.approval is not None
    stage = role.approval.stages[index]
    at = escalates_at(request, role, index)
    escalated = at is not None and now >= at
    return policy.matches_any(principal, policy.stage_approvers(stage, escalated=escalated))


def _decided_another_stage(request: Request, role: Role, index: int, principal: str) -> bool:
    assert role.approval is not None
    return any(
        request.has_decided(principal, StageMark(role.name, other))
        for other in range(len(role.approval.stages))
        if other != index
    )


def may_decide_stage(
    policy: Policy, request: Request, role: Role, index: int, principal: str, now: datetime
) -> bool:
    """An approver of the stage (backups once escalated) who has not decided it yet and, with
    `distinct_stage_approvers`, has decided no other stage of this role's approval."""
    assert role.approval is not None
    if not _approver_of_stage(policy, request, role, index, principal, now):
        return False
    if request.has_decided(principal, StageMark(role.name, index)):
        return False
    return not (
        role.approval.distinct_stage_approvers
        and _decided_another_stage(request, role, index, principal)
    )


def role_denied(policy: Policy, request: Request, role: Role) -> bool:
    if role.approval is None or _settled_without_people(request, role):
        return False
    for index, stage in enumerate(role.approval.stages):
        denials = {a.approver for a in _marks(request, role.name, index, Decision.DENY)}
        if len(denials) >= stage.deny_threshold:
            return True
    return False


def role_approved(policy: Policy, request: Request, role: Role) -> bool:
    return not role_denied(policy, request, role) and open_stage(policy, request, role) is None


def _roles(policy: Policy, request: Request) -> list[Role] | None:
    """The request's roles in the policy it was made under; None when one has gone."""
    found = [policy.roles.get(name) for name in request.roles]
    return None if any(r is None for r in found) else [r for r in found if r is not None]


def count_decision(
    policy: Policy, request: Request, principal: str, now: datetime
) -> tuple[StageMark, ...]:
    """The open stages this principal's decision counts for; refuse when it counts for none,
    saying why: self-approval, already decided, separation of stages, or not an approver."""
    if principal == request.requester:
        raise SelfApproval(
            f"{principal} requested {request.id} and cannot decide on it", rule="self-approval"
        )
    if policy.is_auditor(principal) and not policy.is_admin(principal):
        raise Forbidden(
            f"{principal} is an auditor: auditors read everything and change nothing",
            rule="auditor-read-only",
        )
    marks = []
    decided = separated = False
    for role in _roles(policy, request) or []:
        if role_denied(policy, request, role):
            continue  # with partial, a denied role's stages are closed
        index = open_stage(policy, request, role)
        if index is None or not _approver_of_stage(policy, request, role, index, principal, now):
            continue
        if may_decide_stage(policy, request, role, index, principal, now):
            marks.append(StageMark(role.name, index))
        elif request.has_decided(principal, StageMark(role.name, index)):
            decided = True
        else:
            separated = True
    if marks:
        return tuple(marks)
    if decided:
        raise Conflict(
            f"{principal} has already decided on request {request.id}", rule="decided-twice"
        )
    if separated:
        raise Forbidden(
            f"{principal} decided an earlier stage of request {request.id}; another person must "
            "decide this one (distinct_stage_approvers)",
            rule="distinct-stage-approvers",
        )
    raise Forbidden(
        f"{principal} is not an approver of any open stage of request {request.id}",
        rule="not-an-approver",
    )


def can_decide(policy: Policy, request: Request, principal: str, now: datetime) -> bool:
    try:
        count_decision(policy, request, principal, now)
    except (Forbidden, Conflict):
        return False
    return True


def needs_mfa(policy: Policy, marks: tuple[StageMark, ...]) -> bool:
    """Whether a decision counted for these stages must carry a TOTP code."""
    for mark in marks:
        role = policy.roles.get(mark.role)
        if role is not None and role.approval is not None and role.approval.stages[mark.stage].mfa:
            return True
    return False


def is_denied(policy: Policy, request: Request) -> bool:
    """Denied: any role denied, or with `partial` every role denied."""
    roles = _roles(policy, request)
    if roles is None:
        return False
    denied = [role_denied(policy, request, role) for role in roles]
    return all(denied) if request.partial else any(denied)


def is_fully_approved(policy: Policy, request: Request) -> bool:
    """Every role approved; with `partial`, every role settled and at least one approved."""
    roles = _roles(policy, request)
    if roles is None:
        return False
    approved = [role_approved(policy, request, role) for role in roles]
    if not request.partial:
        return all(approved)
    settled = all(
        ok or role_denied(policy, request, r) for ok, r in zip(approved, roles, strict=True)
    )
    return settled and any(approved)


def approved_roles(policy: Policy, request: Request) -> tuple[str, ...]:
    roles = _roles(policy, request) or []
    return tuple(r.name for r in roles if role_approved(policy, request, r))


def needs_approval(policy: Policy, roles: tuple[str, ...]) -> bool:
    return any(policy.roles[r].approval is not None for r in roles)


# --- escalation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Escalation:
    role: str
    stage: int
    stage_name: str
    at: datetime
    to: tuple[str, ...]  # the backup approvers who may now decide

    @property
    def mark(self) -> str:
        return f"{self.role}#{self.stage}"


def _open_escalations(policy: Policy, request: Request) -> list[Escalation]:
    found = []
    for role in _roles(policy, request) or []:
        if role_denied(policy, request, role):
            continue
        index = open_stage(policy, request, role)
        if index is None:
            continue
        at = escalates_at(request, role, index)
        if at is None or f"{role.name}#{index}" in request.escalations:
            continue
        assert role.approval is not None
        stage = role.approval.stages[index]
        people = tuple(p for p in policy.people(stage.escalate_to) if p != request.requester)
        found.append(Escalation(role.name, index, stage.name, at, people))
    return found


def due_escalations(policy: Policy, request: Request, now: datetime) -> list[Escalation]:
    """Open stages whose escalation time has come and has not been announced yet."""
    return [e for e in _open_escalations(policy, request) if e.at <= now]


def next_escalation(policy: Policy, request: Request) -> datetime | None:
    times = [e.at for e in _open_escalations(policy, request)]
    return min(times) if times else None


# --- who is asked ----------------------------------------------------------------------------
def deciders(policy: Policy, request: Request, now: datetime) -> dict[str, list[str]]:
    """For each role with an open stage: the people who could decide it now."""
    result: dict[str, list[str]] = {}
    for role in _roles(policy, request) or []:
        if role_denied(policy, request, role):
            continue
        index = open_stage(policy, request, role)
        if index is None:
            continue
        assert role.approval is not None
        stage = role.approval.stages[index]
        candidates = policy.people(stage.approvers + stage.escalate_to)
        people = [
            p
            for p in candidates
            if p != request.requester and may_decide_stage(policy, request, role, index, p, now)
        ]
        result[role.name] = sorted(people)
    return result


# --- auto-approval ---------------------------------------------------------------------------
def rule_holds(
    policy: Policy,
    rule: AutoApproveRule,
    requester: str,
    duration: timedelta,
    ticket: str | None,
    on_call: Mapping[str, frozenset[str]],
) -> bool:
    """All conditions of one rule hold (a rule with a condition it cannot check never fires)."""
    if rule.on_call is not None and requester not in on_call.get(rule.on_call, frozenset()):
        return False
    if rule.groups and not set(rule.groups) & policy.groups_of(requester):
        return False
    if rule.max_duration is not None and duration > rule.max_duration:
        return False
    pattern = rule.ticket_pattern()
    return pattern is None or (ticket is not None and pattern.fullmatch(ticket) is not None)


def auto_approval(
    policy: Policy,
    role: Role,
    requester: str,
    duration: timedelta,
    ticket: str | None,
    on_call: Mapping[str, frozenset[str]],
) -> AutoApproveRule | None:
    """The first auto-approve rule of `role` that holds for this request, if any."""
    if role.approval is None:
        return None
    for rule in role.approval.auto_approve:
        if rule_holds(policy, rule, requester, duration, ticket, on_call):
            return rule
    return None
