"""Routes for MFA step-up by TOTP: enrol (secret shown once), confirm, status, admin reset."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from jitaccess.entrypoints.api.auth import Principal, RequestRoute
from jitaccess.entrypoints.api.dependencies import ContainerDep, ReaderDep
from jitaccess.entrypoints.api.responses import COMMON, problem_responses
from jitaccess.services.mfa import ISSUER, confirm, enroll, reset, status

router = APIRouter(prefix="/api/v1", tags=["mfa"], responses=COMMON, route_class=RequestRoute)

# The secret is shown once: no cache, proxy or browser may keep a copy.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class MfaConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=32, examples=["123456"], description="from the authenticator app")


class MfaEnrolmentOut(BaseModel):
    secret: str = Field(description="base32; shown once, never again")
    otpauth_uri: str = Field(description="for a QR code an authenticator app scans")
    issuer: str


class MfaStatusOut(BaseModel):
    enrolled: bool
    confirmed: bool
    locked_until: datetime | None = Field(description="while wrong codes have locked it out")


@router.post(
    "/mfa/enroll",
    status_code=201,
    response_model=MfaEnrolmentOut,
    responses=problem_responses(409, 429),
)
def enroll_mfa(
    principal: Principal, container: ContainerDep, response: Response
) -> MfaEnrolmentOut:
    """A new TOTP secret for the caller (replacing an unconfirmed one); confirm it with a code.
    A confirmed enrolment must be reset by an admin first (409)."""
    with container.uow() as uow:
        enrolment = enroll(uow, container.clock, container.box, principal=principal)
    response.headers.update(NO_STORE)
    return MfaEnrolmentOut(
        secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri, issuer=ISSUER
    )


@router.post("/mfa/confirm", response_model=MfaStatusOut, responses=problem_responses(409, 429))
def confirm_mfa(body: MfaConfirm, principal: Principal, container: ContainerDep) -> MfaStatusOut:
    """Confirm the caller's enrolment with a first valid code (422 `mfa-invalid` when wrong;
    429 `mfa-locked` after too many wrong codes)."""
    with container.uow() as uow:
        confirm(uow, container.clock, container.box, principal=principal, code=body.code)
    with container.uow.readonly() as uow:
        return MfaStatusOut.model_validate(status(uow, principal=principal, clock=container.clock))


@router.get("/mfa", response_model=MfaStatusOut)
def get_mfa(principal: Principal, uow: ReaderDep, container: ContainerDep) -> MfaStatusOut:
    """Whether the caller is enrolled and confirmed, and any lockout; never the secret."""
    found = status(uow, principal=principal, clock=container.clock)
    return MfaStatusOut.model_validate(found)


@router.delete(
    "/mfa/{principal}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(403, 404),
)
def reset_mfa(
    principal: Annotated[str, Path(max_length=64, description="whose enrolment to delete")],
    caller: Principal,
    container: ContainerDep,
) -> Response:
    """Delete someone's enrolment (a lost phone) so they can enrol again; admins only."""
    with container.uow() as uow:
        reset(uow, container.clock, actor=caller, principal=principal)
    return Response(status_code=204)
