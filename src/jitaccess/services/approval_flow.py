"""What happens around a request's approval, shared by the request, decision and worker use
cases: settling it (approve and issue grants, or deny), telling the next approvers, announcing
escalations, and break-glass alerts with their review."""

from __future__ import annotations

from datetime import datetime

from jitaccess.domain import approvals
from jitaccess.domain.model import Request, Review, new_id
from jitaccess.domain.policy import Policy
from jitaccess.ports import Connectors, UnitOfWork
from jitaccess.services.context import audit
from jitaccess.services.grant_issuing import issue_grants
from jitaccess.services.notify import notify


def open_stages(policy: Policy, request: Request) -> dict[str, int | None]:
    return {
        name: approvals.open_stage(policy, request, policy.roles[name])
        for name in request.roles
        if name in policy.roles
    }


def settle(
    uow: UnitOfWork,
    connectors: Connectors,
    policy: Policy,
    request: Request,
    now: datetime,
    *,
    actor: str,
    comment: str | None = None,
    before: dict[str, int | None] | None = None,
) -> None:
    """After a change to a pending request: deny it, approve it (issuing grants for the roles
    approved), or keep it pending and tell whoever must decide next."""
    if approvals.is_denied(policy, request):
        request.deny(now)
        audit(uow, now, actor, "request.denied", request.id, comment=comment)
        notify(uow, now, [request.requester], "denied", request.id, f"request {request.id} denied")
    elif approvals.is_fully_approved(policy, request):
        request.approve(now)
        granted = approvals.approved_roles(policy, request)
        data = {"roles": list(granted)} if granted != request.roles else {}
        audit(uow, now, actor, "request.approved", request.id, comment=comment, data=data)
        issue_grants(uow, connectors, policy, request, now, roles=granted)
        notify(
            uow,
            now,
            [request.requester],
            "approved",
            request.id,
            f"request {request.id} approved: {', '.join(granted)}",
        )
    else:
        _ask_next(uow, policy, request, now, before or {})
    request.next_escalation_at = approvals.next_escalation(policy, request)
    if request.due_at is not None:
        uow.wake_worker(request.due_at)


def _ask_next(
    uow: UnitOfWork,
    policy: Policy,
    request: Request,
    now: datetime,
    before: dict[str, int | None],
) -> None:
    """Notify the people of every stage that opened with this change."""
    after = open_stages(policy, request)
    deciders = approvals.deciders(policy, request, now)
    for role, index in after.items():
        if index is None or role not in deciders or (role in before and before[role] == index):
            continue
        stage = policy.roles[role].approval.stages[index]  # type: ignore[union-attr]
        notify(
            uow,
            now,
            deciders[role],
            "approval-needed",
            request.id,
            f"{request.requester} asks for {role} ({stage.name}): {request.justification}",
            data={"role": role, "stage": stage.name},
        )


def announce_escalations(uow: UnitOfWork, policy: Policy, request: Request, now: datetime) -> int:
    """Open stages past their escalate_after: audit once, tell the backups and the requester."""
    found = approvals.due_escalations(policy, request, now)
    for escalation in found:
        request.escalations.append(escalation.mark)
        audit(
            uow,
            now,
            "system",
            "request.escalated",
            request.id,
            data={
                "role": escalation.role,
                "stage": escalation.stage_name,
                "escalate_to": list(escalation.to),
            },
        )
        notify(
            uow,
            now,
            escalation.to,
            "escalated",
            request.id,
            f"{request.requester}'s request for {escalation.role} waits for stage "
            f"{escalation.stage_name}; you may decide it now",
            data={"role": escalation.role, "stage": escalation.stage_name},
        )
        notify(
            uow,
            now,
            [request.requester],
            "escalated",
            request.id,
            f"stage {escalation.stage_name} of {escalation.role} escalated to "
            f"{', '.join(escalation.to) or 'nobody'}",
        )
    request.next_escalation_at = approvals.next_escalation(policy, request)
    return len(found)


def sound_break_glass(uow: UnitOfWork, policy: Policy, request: Request, now: datetime) -> Review:
    """Alert every approver of the roles and every admin; open the post-incident review."""
    review = Review(
        id=new_id("rev"),
        kind="break-glass",
        request_id=request.id,
        principal=request.requester,
        roles=request.roles,
        justification=request.justification,
        created_at=now,
    )
    uow.reviews.add(review)
    people: set[str] = set(policy.people(policy.admins))
    for name in request.roles:
        people.update(policy.role_approvers(policy.roles[name]))
    people.discard(request.requester)
    alerted = notify(
        uow,
        now,
        people,
        "break-glass",
        request.id,
        f"BREAK-GLASS: {request.requester} activated {', '.join(request.roles)} without "
        f"approval: {request.justification}",
        data={"review": review.id, "roles": list(request.roles)},
    )
    audit(
        uow,
        now,
        request.requester,
        "request.break_glass",
        request.id,
        justification=request.justification,
        ticket=request.ticket,
        data={"roles": list(request.roles), "review": review.id, "alerted": alerted},
    )
    return review
