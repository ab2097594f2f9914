"""Use case: an approver approves or denies a pending request, with a comment."""

from __future__ import annotations

from jitaccess.domain import approvals
from jitaccess.domain.errors import Conflict, JitAccessError, NotFound
from jitaccess.domain.model import Approval, Decision, Request, RequestState
from jitaccess.ports import Clock, Connectors, SecretBox, UnitOfWork
from jitaccess.services.approval_flow import open_stages, settle
from jitaccess.services.context import audit, current_policy, refuse
from jitaccess.services.mfa import verify_step_up
from jitaccess.services.notify import notify


def decide_request(
    uow: UnitOfWork,
    clock: Clock,
    connectors: Connectors,
    *,
    request_id: str,
    approver: str,
    decision: Decision,
    comment: str = "",
    mfa_code: str | None = None,
    box: SecretBox | None = None,
) -> Request:
    now = clock.now()
    action = f"request.{decision.value}"
    # The row lock makes a double click in two processes decide once: the second waits, then
    # sees the request is no longer pending and is refused with Conflict.
    request = uow.requests.get(request_id, for_update=True)
    if request is None:
        raise refuse(uow, now, approver, action, request_id, NotFound(f"no request {request_id}"))
    policy = (uow.policies.get(request.policy_version) or current_policy(uow)).policy
    if request.state is RequestState.PENDING and request.is_past_ttl(now):
        # The worker has not got to it yet; the TTL holds all the same.
        request.expire(now)
        uow.requests.save(request)
        audit(uow, now, "system", "request.expired", request.id)
        notify(uow, now, [request.requester], "expired", request.id, "no decision in time")
        uow.commit()
    try:
        if request.state is not RequestState.PENDING:
            raise Conflict(
                f"request {request.id} is {request.state.value}; decisions are closed",
                rule="stale-decision",
            )
        marks = approvals.count_decision(policy, request, approver, now)
        if approvals.needs_mfa(policy, marks):
            if box is None:
                raise RuntimeError("MFA needs the server's secret box")
            verify_step_up(
                uow,
                clock,
                box,
                principal=approver,
                code=mfa_code,
                purpose=decision.value,
                subject=request.id,
            )
    except JitAccessError as error:
        raise refuse(uow, now, approver, action, request.id, error) from None

    before = open_stages(policy, request)
    request.record(Approval(approver, decision, comment, now, marks))
    audit(
        uow,
        now,
        approver,
        "request.approval" if decision is Decision.APPROVE else "request.denial",
        request.id,
        comment=comment,
        data={"stages": [f"{m.role}#{m.stage}" for m in marks]},
    )
    try:
        settle(
            uow, connectors, policy, request, now, actor=approver, comment=comment, before=before
        )
    except JitAccessError as error:
        # e.g. the grant an extension was for has ended meanwhile, or the role is at capacity
        raise refuse(uow, now, approver, action, request.id, error) from None
    uow.requests.save(request)
    uow.commit()
    return request
