"""Use case: recompute the audit chain from the first record and name the first bad one."""

from __future__ import annotations

from jitaccess.audit.chain import Verification, verify
from jitaccess.ports import UnitOfWork


def verify_audit(uow: UnitOfWork) -> Verification:
    return verify(uow.audit.iterate())
