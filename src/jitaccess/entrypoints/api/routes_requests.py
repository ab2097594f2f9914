"""Routes for requests: ask for roles, list and read them, approve, deny, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from jitaccess.bootstrap import Container
from jitaccess.domain.errors import JitAccessError
from jitaccess.domain.model import Decision, Request, RequestState
from jitaccess.entrypoints.api import schemas
from jitaccess.entrypoints.api.auth import Principal, RequestRoute
from jitaccess.entrypoints.api.dependencies import ContainerDep, MetricsDep, ReaderDep
from jitaccess.entrypoints.api.responses import COMMON, problem_responses
from jitaccess.services.cancel_request import cancel_request
from jitaccess.services.decide_request import decide_request
from jitaccess.services.read_access import list_requests, read_request
from jitaccess.services.request_access import request_access

router = APIRouter(prefix="/api/v1", tags=["requests"], responses=COMMON, route_class=RequestRoute)

Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many items")]


@router.post(
    "/requests",
    status_code=201,
    response_model=schemas.RequestOut,
    responses={
        200: {"model": schemas.RequestPreviewOut, "description": "dry run: what it would need"},
        **problem_responses(403, 409, 422, 429),
    },
)
def create_request(
    body: schemas.RequestCreate,
    principal: Principal,
    container: ContainerDep,
    metrics: MetricsDep,
    dry_run: Annotated[bool, Query(description="check and preview, create nothing")] = False,
) -> schemas.RequestOut | JSONResponse:
    """Ask for one or more roles for a while; roles without approval are granted at once."""
    try:
        with container.uow() as uow:
            result = request_access(
                uow,
                container.clock,
                container.connectors,
                requester=principal,
                roles=body.roles,
                duration=body.duration_value(),
                justification=body.justification,
                ticket=body.ticket,
                start_at=body.start_at,
                dry_run=dry_run,
                partial=body.partial,
                break_glass=body.break_glass,
                mfa_code=body.mfa_code,
                box=container.box,
                oncall=container.oncall,
                params={"ssh_public_key": body.ssh_public_key} if body.ssh_public_key else None,
            )
    except JitAccessError:
        if not dry_run:
            metrics.requests.labels("refused").inc()
        raise
    if not isinstance(result, Request):
        preview = schemas.RequestPreviewOut.of(result)
        return JSONResponse(preview.model_dump(mode="json"), status_code=200)
    metrics.requests.labels(
        "approved" if result.state is RequestState.APPROVED else "pending"
    ).inc()
    return schemas.RequestOut.of(result)


@router.get("/requests", response_model=schemas.RequestList)
def get_requests(
    principal: Principal,
    uow: ReaderDep,
    container: ContainerDep,
    state: RequestState | None = None,
    to_approve: Annotated[bool, Query(description="only those the caller may decide now")] = False,
    limit: Limit = 200,
) -> schemas.RequestList:
    """Requests the caller may see: their own, those they approve, all for admins/auditors."""
    found = list_requests(
        uow,
        container.clock,
        viewer=principal,
        state=state.value if state else None,
        to_approve=to_approve,
        limit=limit,
    )
    return schemas.RequestList(items=[schemas.RequestOut.of(r) for r in found])


@router.get(
    "/requests/{request_id}",
    response_model=schemas.RequestOut,
    responses=problem_responses(404),
)
def get_request(
    request_id: str, principal: Principal, uow: ReaderDep, container: ContainerDep
) -> schemas.RequestOut:
    request = read_request(uow, container.clock, request_id=request_id, viewer=principal)
    return schemas.RequestOut.of(request)


def _decide(
    container: Container,
    request_id: str,
    principal: str,
    decision: Decision,
    body: schemas.Decision | None,
) -> schemas.RequestOut:
    with container.uow() as uow:
        request = decide_request(
            uow,
            container.clock,
            container.connectors,
            request_id=request_id,
            approver=principal,
            decision=decision,
            comment=body.comment if body else "",
            mfa_code=body.mfa_code if body else None,
            box=container.box,
        )
    return schemas.RequestOut.of(request)


DECISION_RESPONSES = problem_responses(403, 404, 409, 422, 429)


@router.post(
    "/requests/{request_id}/approve",
    response_model=schemas.RequestOut,
    responses=DECISION_RESPONSES,
)
def approve_request(
    request_id: str,
    principal: Principal,
    container: ContainerDep,
    body: schemas.Decision | None = None,
) -> schemas.RequestOut:
    """Approve a pending request; the last approval it needs creates its grants."""
    return _decide(container, request_id, principal, Decision.APPROVE, body)


@router.post(
    "/requests/{request_id}/deny",
    response_model=schemas.RequestOut,
    responses=DECISION_RESPONSES,
)
def deny_request(
    request_id: str,
    principal: Principal,
    container: ContainerDep,
    body: schemas.Decision | None = None,
) -> schemas.RequestOut:
    return _decide(container, request_id, principal, Decision.DENY, body)


@router.post(
    "/requests/{request_id}/cancel",
    response_model=schemas.RequestOut,
    responses=DECISION_RESPONSES,
)
def cancel(
    request_id: str,
    principal: Principal,
    container: ContainerDep,
    body: schemas.Decision | None = None,
) -> schemas.RequestOut:
    """The requester withdraws a request that is still pending."""
    with container.uow() as uow:
        request = cancel_request(
            uow,
            container.clock,
            request_id=request_id,
            principal=principal,
            comment=body.comment if body else "",
        )
    return schemas.RequestOut.of(request)
