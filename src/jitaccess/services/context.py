"""What every use case needs first: the policy in force, and a way to write audit records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jitaccess.domain.errors import Conflict, JitAccessError
from jitaccess.ports import AuditEntry, PolicyVersion, UnitOfWork


def current_policy(uow: UnitOfWork) -> PolicyVersion:
    version = uow.policies.current()
    if version is None:
        raise Conflict("no policy has been applied yet: run `jitaccess policy apply FILE`")
    return version


def audit(
    uow: UnitOfWork,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    *,
    justification: str | None = None,
    ticket: str | None = None,
    comment: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> None:
    uow.audit.append(
        AuditEntry(
            actor=actor,
            action=action,
            subject=subject,
            at=at,
            justification=justification,
            ticket=ticket,
            comment=comment,
            data=dict(data or {}),
        )
    )


def refuse(
    uow: UnitOfWork,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    error: JitAccessError,
    data: Mapping[str, Any] | None = None,
) -> JitAccessError:
    """Record a refused attempt (committed on its own, since nothing else changes) and return it."""
    uow.rollback()
    uow.audit.append(
        AuditEntry(
            actor=actor,
            action=action,
            subject=subject,
            at=at,
            outcome="refused",
            comment=error.message,
            data={"reason": error.code, "rule": error.rule, **(data or {})},
        )
    )
    uow.commit()
    return error
