"""Who is calling: the principal behind `Authorization: Bearer <token>`, and reader checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jitaccess.domain.errors import Forbidden, Unauthenticated
from jitaccess.entrypoints.api.dependencies import ContainerDep
from jitaccess.ports import UnitOfWork
from jitaccess.services.context import current_policy
from jitaccess.services.manage_tokens import authenticate

bearer = HTTPBearer(
    auto_error=False,
    description="An API token made with `jitaccess token create`.",
)


def current_principal(
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The authenticated principal; 401 problem when the token is missing, unknown or revoked."""
    if credentials is None:
        raise Unauthenticated("send an API token as `Authorization: Bearer <token>`")
    with container.uow.readonly() as uow:
        return authenticate(uow, credentials.credentials)


Principal = Annotated[str, Depends(current_principal)]


def require_reader(uow: UnitOfWork, principal: str) -> None:
    """Only admins and auditors read everything (the audit log, other people's access)."""
    if not current_policy(uow).policy.can_read_everything(principal):
        raise Forbidden("only admins and auditors can read this", rule="not-an-admin-or-auditor")


def require_admin(uow: UnitOfWork, principal: str) -> None:
    if not current_policy(uow).policy.is_admin(principal):
        raise Forbidden("only admins can do this", rule="not-an-admin")
