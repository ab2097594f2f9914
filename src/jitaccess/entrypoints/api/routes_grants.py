"""Routes for grants: list and read them, fetch credentials once, extend, deactivate, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from jitaccess.domain.model import EndReason, GrantState, RequestState
from jitaccess.entrypoints.api import schemas
from jitaccess.entrypoints.api.auth import Principal, RequestRoute
from jitaccess.entrypoints.api.dependencies import ContainerDep, ReaderDep
from jitaccess.entrypoints.api.responses import COMMON, problem_responses
from jitaccess.services.end_grant import end_grant
from jitaccess.services.extend_grant import extend_grant
from jitaccess.services.fetch_credentials import fetch_credentials
from jitaccess.services.read_access import list_grants, read_grant

router = APIRouter(prefix="/api/v1", tags=["grants"], responses=COMMON, route_class=RequestRoute)

CHANGE_RESPONSES = problem_responses(403, 404, 409)
# Credentials are shown once: no cache, proxy or browser may keep a copy.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.get("/grants", response_model=schemas.GrantList)
def get_grants(
    principal: Principal,
    uow: ReaderDep,
    state: GrantState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> schemas.GrantList:
    """The caller's grants; every grant for admins and auditors."""
    found = list_grants(uow, viewer=principal, state=state.value if state else None, limit=limit)
    return schemas.GrantList(items=[schemas.GrantOut.of(g) for g in found])


@router.get("/grants/{grant_id}", response_model=schemas.GrantOut, responses=problem_responses(404))
def get_grant(
    grant_id: str, principal: Principal, uow: ReaderDep, container: ContainerDep
) -> schemas.GrantOut:
    grant = read_grant(uow, container.clock, grant_id=grant_id, viewer=principal)
    return schemas.GrantOut.of(grant)


@router.get(
    "/grants/{grant_id}/credentials",
    response_model=dict[str, str],
    responses=problem_responses(404, 409),
)
def get_credentials(grant_id: str, principal: Principal, container: ContainerDep) -> JSONResponse:
    """The grant's credentials, to its grantee, once; a second fetch is refused (409)."""
    with container.uow() as uow:
        credentials = fetch_credentials(
            uow, container.clock, container.box, grant_id=grant_id, principal=principal
        )
    return JSONResponse(credentials, headers=NO_STORE)


@router.post(
    "/grants/{grant_id}/extend",
    response_model=schemas.ExtensionOut,
    responses=CHANGE_RESPONSES,
)
def extend(
    grant_id: str, body: schemas.Extend, principal: Principal, container: ContainerDep
) -> schemas.ExtensionOut:
    """More time on a live grant, within the role's max; may need approval again."""
    with container.uow() as uow:
        extension = extend_grant(
            uow,
            container.clock,
            container.connectors,
            grant_id=grant_id,
            principal=principal,
            duration=body.duration_value(),
            justification=body.justification,
            ticket=body.ticket,
            mfa_code=body.mfa_code,
            box=container.box,
        )
    request = extension.request
    return schemas.ExtensionOut(
        grant=schemas.GrantOut.of(extension.grant),
        request=schemas.RequestOut.of(request) if request else None,
        pending_approval=request is not None and request.state is RequestState.PENDING,
    )


@router.post(
    "/grants/{grant_id}/deactivate",
    response_model=schemas.GrantOut,
    responses=CHANGE_RESPONSES,
)
def deactivate(
    grant_id: str,
    principal: Principal,
    container: ContainerDep,
    body: schemas.Deactivate | None = None,
) -> schemas.GrantOut:
    """The grantee gives the access back early; the worker removes it from the target."""
    with container.uow() as uow:
        grant = end_grant(
            uow,
            container.clock,
            grant_id=grant_id,
            actor=principal,
            reason=EndReason.DEACTIVATED,
            comment=body.comment if body else "",
        )
    return schemas.GrantOut.of(grant)


@router.post(
    "/grants/{grant_id}/revoke",
    response_model=schemas.GrantOut,
    responses=CHANGE_RESPONSES,
)
def revoke(
    grant_id: str, body: schemas.Revoke, principal: Principal, container: ContainerDep
) -> schemas.GrantOut:
    """An admin ends someone's grant, with a reason; the worker removes the access."""
    with container.uow() as uow:
        grant = end_grant(
            uow,
            container.clock,
            grant_id=grant_id,
            actor=principal,
            reason=EndReason.REVOKED,
            comment=body.reason,
        )
    return schemas.GrantOut.of(grant)
