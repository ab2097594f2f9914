"""Use case: the grantee asks for more time on a live grant, within the role's max."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from jitaccess.domain.durations import format_duration
from jitaccess.domain.errors import Conflict, Forbidden, JitAccessError, NotFound
from jitaccess.domain.model import Grant, GrantState, Request, new_id
from jitaccess.domain.policy import OnExtend
from jitaccess.domain.rules import check_requirements, extension_end
from jitaccess.ports import Clock, Connectors, SecretBox, UnitOfWork
from jitaccess.services.approval_flow import settle
from jitaccess.services.context import audit, current_policy, refuse
from jitaccess.services.grant_issuing import extend_existing
from jitaccess.services.mfa import verify_step_up


@dataclass(frozen=True)
class Extension:
    """Either the grant was extended now, or an extension request awaits approval."""

    grant: Grant
    request: Request | None = None


def extend_grant(
    uow: UnitOfWork,
    clock: Clock,
    connectors: Connectors,
    *,
    grant_id: str,
    principal: str,
    duration: timedelta,
    justification: str = "",
    ticket: str | None = None,
    mfa_code: str | None = None,
    box: SecretBox | None = None,
) -> Extension:
    now = clock.now()
    version = current_policy(uow)
    policy = version.policy
    grant = uow.grants.get(grant_id, for_update=True)
    try:
        if grant is None:
            raise NotFound(f"no grant {grant_id}")
        if grant.principal != principal:
            raise Forbidden("only the grantee can extend a grant", rule="not-the-grantee")
        if not grant.is_live or grant.state is GrantState.REVOKING:
            raise Conflict(f"grant {grant.id} is {grant.state.value}; only a live grant extends")
        role = policy.roles.get(grant.role)
        if role is None:
            raise Conflict(f"role {grant.role} is no longer in the policy", rule="role-removed")
        if not policy.is_eligible(principal, role.name, now.date()):
            raise Forbidden(
                f"{principal} is no longer eligible for {role.name}", rule="eligibility"
            )
        origin = uow.requests.get(grant.request_id)
        if origin is not None and origin.break_glass:
            raise Conflict(
                f"grant {grant.id} was a break-glass activation and cannot be extended; "
                "break glass again if the emergency goes on",
                rule="break-glass-extension",
            )
        target = policy.targets.get(grant.target)
        if target is not None and not getattr(connectors.for_target(target), "can_extend", True):
            raise Conflict(
                f"grants on {target.name} ({target.type}) cannot be extended: request a new grant",
                rule="cannot-extend",
            )
        extension_end(role, grant.starts_at, grant.ends_at, duration)
        check_requirements((role,), justification, ticket or None, mfa_verified=True)
        if role.require.mfa:
            if box is None:
                raise RuntimeError("MFA needs the server's secret box")
            verify_step_up(
                uow,
                clock,
                box,
                principal=principal,
                code=mfa_code,
                purpose="extend",
                subject=grant.id,
            )
    except JitAccessError as error:
        raise refuse(uow, now, principal, "grant.extend", grant_id, error) from None

    request = Request(
        id=new_id("req"),
        requester=principal,
        roles=(grant.role,),
        duration=duration,
        justification=justification,
        ticket=ticket or None,
        created_at=now,
        policy_version=version.version,
        extends_grant_id=grant.id,
    )
    needs_approval = role.approval is not None and role.approval.on_extend is OnExtend.REQUIRED
    audit(
        uow,
        now,
        principal,
        "request.created",
        request.id,
        justification=justification,
        ticket=request.ticket,
        data={"extends": grant.id, "duration": format_duration(duration)},
    )
    if needs_approval:
        assert role.approval is not None
        request.pending_until = now + role.approval.pending_ttl
        uow.requests.add(request)
        settle(uow, connectors, policy, request, now, actor="system")  # asks the approvers
        uow.requests.save(request)
        uow.commit()
        return Extension(grant, request)
    request.approve(now)
    audit(
        uow,
        now,
        "system",
        "request.approved",
        request.id,
        data={"rule": "extension needs no approval"},
    )
    uow.requests.add(request)
    extended = extend_existing(uow, connectors, policy, request, now)
    uow.requests.save(request)
    uow.commit()
    return Extension(extended, request)
