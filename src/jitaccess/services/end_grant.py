"""Use case: end a live grant early — deactivated by its grantee, or revoked by an admin."""

from __future__ import annotations

from jitaccess.domain.errors import Forbidden, InvalidInput, JitAccessError, NotFound
from jitaccess.domain.model import EndReason, Grant
from jitaccess.ports import Clock, UnitOfWork
from jitaccess.services.context import audit, current_policy, refuse


def end_grant(
    uow: UnitOfWork,
    clock: Clock,
    *,
    grant_id: str,
    actor: str,
    reason: EndReason,
    comment: str = "",
) -> Grant:
    """Move the grant to revoking; the worker removes the access and then marks it ended."""
    now = clock.now()
    action = "grant.deactivate" if reason is EndReason.DEACTIVATED else "grant.revoke"
    policy = current_policy(uow).policy
    grant = uow.grants.get(grant_id, for_update=True)
    try:
        if grant is None:
            raise NotFound(f"no grant {grant_id}")
        if reason is EndReason.DEACTIVATED and grant.principal != actor:
            raise Forbidden("only the grantee can deactivate a grant", rule="not-the-grantee")
        if reason is EndReason.REVOKED:
            if not policy.is_admin(actor):
                raise Forbidden("only an admin can revoke a grant", rule="not-an-admin")
            if not comment.strip():
                raise InvalidInput("a revoke needs a reason", field="reason")
        grant.begin_end(reason, now, actor=actor, comment=comment or None)
    except JitAccessError as error:
        raise refuse(uow, now, actor, action, grant_id, error) from None
    uow.grants.save(grant)
    # The command is audited now; `grant.revoked` / `grant.deactivated` follows when the target
    # confirms the access is gone.
    audit(
        uow,
        now,
        actor,
        action,
        grant.id,
        comment=comment or None,
        data={"principal": grant.principal, "role": grant.role},
    )
    uow.wake_worker()
    uow.commit()
    return grant
