"""Use case: a principal asks for one or more roles for a while, with a reason.

Order of checks: roles, eligibility, duration (break-glass has its own cap), requirements,
start and allowed hours, capacity, then the MFA code last, so a typo elsewhere never costs a
code. Then auto-approval per role; break-glass skips approval but alerts and opens a review.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jitaccess.domain import approvals
from jitaccess.domain.durations import format_duration
from jitaccess.domain.errors import InvalidInput, JitAccessError
from jitaccess.domain.model import Request, new_id
from jitaccess.domain.policy import Policy, Role
from jitaccess.domain.rules import (
    break_glass_duration,
    check_allowed_hours,
    check_eligible,
    check_requirements,
    check_start,
    effective_duration,
    is_break_glass,
    pending_deadline,
    resolve_roles,
)
from jitaccess.ports import Clock, Connectors, OnCall, SecretBox, UnitOfWork
from jitaccess.services.approval_flow import settle, sound_break_glass
from jitaccess.services.context import audit, current_policy, refuse
from jitaccess.services.grant_issuing import check_capacity, issue_grants
from jitaccess.services.mfa import verify_step_up


@dataclass(frozen=True)
class StagePreview:
    role: str
    stage: str
    approvers: tuple[str, ...]  # as the policy names them (user:…, group:…)
    people: tuple[str, ...]  # who that is today, without the requester
    min_approvals: int
    all_groups: bool = False
    escalate_after: timedelta | None = None
    escalate_to: tuple[str, ...] = ()
    mfa: bool = False


@dataclass(frozen=True)
class RequestPreview:
    """What a request would need, for `--dry-run`; nothing is created."""

    roles: tuple[str, ...]
    duration: timedelta
    starts_at: datetime
    needs_approval: bool
    stages: tuple[StagePreview, ...]
    mfa_required: bool = False
    auto_approved: Mapping[str, str] = field(default_factory=dict)  # role -> rule that fires
    break_glass: bool = False
    outcome: str = "granted"  # granted | pending | break-glass


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
    partial: bool = False,
    break_glass: bool = False,
    mfa_code: str | None = None,
    box: SecretBox | None = None,
    oncall: OnCall | None = None,
    params: Mapping[str, str] | None = None,
) -> Request | RequestPreview:
    now = clock.now()
    version = current_policy(uow)
    policy = version.policy
    ticket = ticket or None
    try:
        resolved = resolve_roles(policy, roles)
        check_eligible(policy, requester, resolved, now)
        emergency = is_break_glass(resolved, break_glass)
        if emergency:
            asked = break_glass_duration(policy, requester, resolved, duration, justification)
        else:
            asked = effective_duration(resolved, duration)
        check_requirements(resolved, justification, ticket, mfa_verified=True)
        starts_at = check_start(start_at, now)
        if not emergency:  # an emergency does not wait for office hours
            check_allowed_hours(resolved, starts_at)
        params = _check_params(policy, connectors, resolved, params or {})
        needs_mfa = any(role.require.mfa for role in resolved)
        auto = (
            {}
            if emergency
            else _auto_approvals(policy, resolved, requester, asked, ticket, now, oncall)
        )
        if dry_run:
            check_capacity(uow, policy, tuple(roles))
            return preview(
                policy, requester, resolved, asked, starts_at, needs_mfa, auto, emergency
            )
        if needs_mfa:
            if box is None:
                raise RuntimeError("MFA needs the server's secret box")
            verify_step_up(
                uow,
                clock,
                box,
                principal=requester,
                code=mfa_code,
                purpose="request",
                subject=",".join(roles),
            )
        # After the MFA row: every writer takes an MFA row before a role lock, never after.
        check_capacity(uow, policy, tuple(roles))
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
        pending_until=None if emergency else pending_deadline(resolved, now),
        partial=partial and len(roles) > 1,
        break_glass=emergency,
        auto_approved=auto,
        params=dict(params),
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
            **({"partial": True} if request.partial else {}),
            **({"break_glass": True} if emergency else {}),
            **({"mfa": True} if needs_mfa else {}),
        },
    )
    if emergency:
        sound_break_glass(uow, policy, request, now)
        request.approve(now)
        audit(uow, now, "system", "request.approved", request.id, data={"rule": "break-glass"})
        issue_grants(uow, connectors, policy, request, now)
    else:
        for role_name, rule in auto.items():
            audit(
                uow,
                now,
                "system",
                "request.auto_approved",
                request.id,
                data={"role": role_name, "rule": rule},
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
            issue_grants(uow, connectors, policy, request, now)
        else:
            settle(uow, connectors, policy, request, now, actor="system")
    # Written once, as approval left it (nothing above reads the request back).
    uow.requests.add(request)
    uow.commit()
    return request


MAX_PARAM = 16_384


def _check_params(
    policy: Policy, connectors: Connectors, roles: tuple[Role, ...], given: Mapping[str, str]
) -> dict[str, str]:
    """Keep the parameters the roles' targets need; refuse a missing or oversized one."""
    needed: dict[str, str] = {}
    for role in roles:
        target = policy.targets.get(role.target)
        for name in connectors.required_params(target) if target else ():
            needed.setdefault(name, role.name)
    for name, role_name in needed.items():
        value = given.get(name)
        if not value or not value.strip():
            raise InvalidInput(f"{role_name} needs {name} (e.g. --ssh-key PATH)", field=name)
        if len(value) > MAX_PARAM or "\n" in value.strip():
            raise InvalidInput(
                f"{name} must be one line of at most {MAX_PARAM} characters", field=name
            )
    kept = {name: given[name].strip() for name in needed}
    for role in roles:
        target = policy.targets.get(role.target)
        for name, reason in connectors.param_problems(target, kept) if target else ():
            raise InvalidInput(f"{name}: {reason}", field=name)
    return kept


def on_call_now(
    policy: Policy, roles: tuple[Role, ...], now: datetime, oncall: OnCall | None
) -> dict[str, frozenset[str]]:
    """Who is on call now in each schedule the roles' rules name, as policy user names."""
    names = {
        rule.on_call
        for role in roles
        if role.approval is not None
        for rule in role.approval.auto_approve
        if rule.on_call is not None
    }
    found: dict[str, frozenset[str]] = {}
    for name in sorted(names):
        schedule = policy.schedules.get(name)
        who = oncall.who(schedule.file, now) if oncall and schedule else None
        users = (policy.find_user(i) for i in who or ())
        found[name] = frozenset(u for u in users if u is not None)
    return found


def _auto_approvals(
    policy: Policy,
    roles: tuple[Role, ...],
    requester: str,
    duration: timedelta,
    ticket: str | None,
    now: datetime,
    oncall: OnCall | None,
) -> dict[str, str]:
    if not any(r.approval and r.approval.auto_approve for r in roles):
        return {}
    on_call = on_call_now(policy, roles, now, oncall)
    fired = {}
    for role in roles:
        rule = approvals.auto_approval(policy, role, requester, duration, ticket, on_call)
        if rule is not None:
            fired[role.name] = rule.name
    return fired


def preview(
    policy: Policy,
    requester: str,
    roles: tuple[Role, ...],
    duration: timedelta,
    starts_at: datetime,
    mfa_required: bool,
    auto: dict[str, str],
    emergency: bool,
) -> RequestPreview:
    stages = tuple(
        StagePreview(
            role=role.name,
            stage=stage.name,
            approvers=tuple(str(ref) for ref in stage.approvers),
            people=tuple(p for p in policy.people(stage.approvers) if p != requester),
            min_approvals=stage.min_approvals,
            all_groups=stage.all_groups,
            escalate_after=stage.escalate_after,
            escalate_to=tuple(p for p in policy.people(stage.escalate_to) if p != requester),
            mfa=stage.mfa,
        )
        for role in roles
        if role.approval is not None and role.name not in auto and not emergency
        for stage in role.approval.stages
    )
    outcome = "break-glass" if emergency else ("pending" if stages else "granted")
    return RequestPreview(
        roles=tuple(r.name for r in roles),
        duration=duration,
        starts_at=starts_at,
        needs_approval=bool(stages),
        stages=stages,
        mfa_required=mfa_required,
        auto_approved=auto,
        break_glass=emergency,
        outcome=outcome,
    )
