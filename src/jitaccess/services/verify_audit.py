"""Use case: recompute the audit chain from the first record and name the first bad one."""

from __future__ import annotations

from jitaccess.audit.chain import Verification, verify
from jitaccess.audit.ranges import verify_stored_chain
from jitaccess.ports import StoredAuditChain, UnitOfWork


def verify_audit(uow: UnitOfWork, *, workers: int | None = None) -> Verification:
    """Every hash recomputed and every link checked. A log that can stream its records as
    stored is verified in seq ranges on `workers` processes (default: one per CPU when the
    chain is long enough to repay them); the result is the same either way."""
    if isinstance(uow.audit, StoredAuditChain):
        return verify_stored_chain(uow.audit, workers)
    return verify(uow.audit.iterate())
