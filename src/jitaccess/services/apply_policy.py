"""Use case: apply a new policy version — atomic, versioned, audited; unchanged is a no-op."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jitaccess.domain.errors import Conflict, Forbidden
from jitaccess.domain.policy import Policy
from jitaccess.ports import Clock, PolicyVersion, UnitOfWork
from jitaccess.services.context import audit, refuse


def apply_policy(
    uow: UnitOfWork,
    clock: Clock,
    *,
    policy: Policy,
    document: Mapping[str, Any],
    digest: str,
    actor: str,
    on_server_host: bool = False,
    summarize: Callable[[Policy | None, Policy], list[str]] | None = None,
) -> PolicyVersion | None:
    """Store `policy` as the next version; None when it equals the current one.

    Through the API only an admin of the policy in force may apply; on the server host (CLI
    talking to the database directly) the operator is trusted, as with `token create`.
    """
    now = clock.now()
    current = uow.policies.current()
    # Deny by default: through the API even the first policy needs an admin, so only the
    # server host can bootstrap one.
    if not on_server_host and (current is None or not current.policy.is_admin(actor)):
        raise refuse(
            uow,
            now,
            actor,
            "policy.apply",
            "policy",
            Forbidden("only an admin can change the policy", rule="not-an-admin"),
        )
    if current is not None and current.digest == digest:
        return None
    if not on_server_host and not policy.is_admin(actor):
        # Through the API, a policy that leaves its applier without admin rights could lock
        # every admin out; only the server host may make that change.
        raise refuse(
            uow,
            now,
            actor,
            "policy.apply",
            "policy",
            Conflict(
                f"the new policy would leave {actor} without admin rights; keep yourself among "
                "the admins, or apply it on the server host (`jitaccess policy apply`)",
                rule="admin-lockout",
            ),
        )
    stranded = sorted(
        f"{role} (target {target})"
        for role, target in uow.grants.live_roles()
        if role not in policy.roles or target not in policy.targets
    )
    if stranded:
        # Their access could never be revoked: the connector would be gone with the target.
        raise refuse(
            uow,
            now,
            actor,
            "policy.apply",
            "policy",
            Conflict(
                "the new policy removes roles or targets that still have live grants: "
                + ", ".join(stranded)
                + "; revoke those grants first",
                rule="live-grants",
            ),
        )
    version = PolicyVersion(
        version=(current.version + 1) if current else 1,
        policy=policy,
        document=document,
        digest=digest,
        applied_at=now,
        applied_by=actor,
    )
    uow.policies.add(version)
    changes = summarize(current.policy if current else None, policy) if summarize else []
    audit(
        uow,
        now,
        actor,
        "policy.applied",
        f"policy/v{version.version}",
        data={
            "version": version.version,
            "digest": digest,
            "previous": current.version if current else None,
            "changes": changes[:200],
        },
    )
    uow.commit()
    return version
