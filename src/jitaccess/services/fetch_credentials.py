"""Use case: the grantee fetches the credentials of a grant, once."""

from __future__ import annotations

import json

from jitaccess.domain.errors import Conflict, JitAccessError, NotFound
from jitaccess.domain.model import GrantState
from jitaccess.ports import Clock, SecretBox, UnitOfWork
from jitaccess.services.context import audit, refuse


def fetch_credentials(
    uow: UnitOfWork, clock: Clock, box: SecretBox, *, grant_id: str, principal: str
) -> dict[str, str]:
    now = clock.now()
    grant = uow.grants.get(grant_id, for_update=True)
    try:
        # Someone else's grant looks exactly like a missing one: IDs reveal nothing.
        if grant is None or grant.principal != principal:
            raise NotFound(f"no grant {grant_id}")
        if grant.state is not GrantState.ACTIVE:
            raise Conflict(
                f"grant {grant.id} is {grant.state.value}; credentials are only handed out "
                "while it is active",
                rule="grant-not-active",
            )
        sealed = uow.grants.take_credentials(grant.id, now)
        if sealed is None:
            fetched = uow.grants.credentials_fetched(grant.id)
            raise Conflict(
                f"the credentials of grant {grant.id} were already fetched"
                if fetched
                else f"grant {grant.id} has no credentials to fetch",
                rule="credentials-once",
            )
    except JitAccessError as error:
        raise refuse(uow, now, principal, "grant.credentials", grant_id, error) from None
    # Open before committing the erasure: a key mismatch must not lose the credentials.
    credentials: dict[str, str] = json.loads(box.open(sealed))
    audit(uow, now, principal, "grant.credentials_fetched", grant.id)
    uow.commit()
    return credentials
