"""Use case: is this principal's access to this role in force now, and until when?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jitaccess.ports import Clock, UnitOfWork


@dataclass(frozen=True)
class AccessCheck:
    principal: str
    role: str
    active: bool
    until: datetime | None
    grant_ids: tuple[str, ...]


def check_access(uow: UnitOfWork, clock: Clock, *, principal: str, role: str) -> AccessCheck:
    now = clock.now()
    covering = [g for g in uow.grants.live_for(principal, role) if g.covers(now)]
    until = max((g.ends_at for g in covering), default=None)
    return AccessCheck(principal, role, bool(covering), until, tuple(g.id for g in covering))
