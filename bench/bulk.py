"""Bulk state for the large benchmarks: thousands of active grants, or audit records, written in
a few seconds instead of the minutes the use cases would take one request at a time.

The rows are made the way the product makes them: domain `Request` and `Grant` objects moved
through their own state transitions (approve; start_activating; mark_provisioned), turned into
rows by the repositories' own row functions, and inserted many per statement in batches. What is
left out is the audit trail of their creation (nothing that the worker or the API reads) and
the connector call (the bench provisions the fake connector's in-memory accounts itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text, update

from bench.setup import progress
from jitaccess.adapters.db.repositories import _grant_row, _request_row
from jitaccess.adapters.db.tables import audit_head, audit_log, grants, requests
from jitaccess.audit.chain import GENESIS, record_fields, seal
from jitaccess.bootstrap import Container
from jitaccess.domain.model import Grant, Request, new_id
from jitaccess.ports import Access, AuditEntry, PolicyVersion
from jitaccess.services.grant_issuing import access_key, access_of

BATCH = 2_000


@dataclass(frozen=True)
class ActiveGrant:
    """A principal's grant of `role`, active from `created_at` until `ends_at`."""

    principal: str
    created_at: datetime
    ends_at: datetime


def insert_active_grants(
    container: Container, role: str, wanted: Sequence[ActiveGrant], label: str = "bulk"
) -> list[Grant]:
    """Write one approved request and one active grant per item; returns the grants."""
    with container.uow.readonly() as uow:
        version = uow.policies.current()
    assert version is not None, "apply a policy first"
    policy = version.policy
    target = policy.roles[role].target
    made: list[Grant] = []
    started = time.monotonic()
    for chunk in _chunks(wanted, BATCH):
        request_rows: list[dict[str, Any]] = []
        grant_rows: list[dict[str, Any]] = []
        for item in chunk:
            at = item.created_at
            request = Request(
                id=new_id("req"),
                requester=item.principal,
                roles=(role,),
                duration=item.ends_at - at,
                justification="bench (bulk)",
                ticket=None,
                created_at=at,
                policy_version=version.version,
                pending_until=None,
            )
            request.approve(at)
            grant_id = new_id("grt")
            grant = Grant(
                id=grant_id,
                request_id=request.id,
                principal=item.principal,
                role=role,
                target=target,
                access_key=access_key(container.connectors, policy, grant_id, item.principal, role),
                starts_at=at,
                ends_at=item.ends_at,
                created_at=at,
            )
            grant.start_activating(at)
            grant.mark_provisioned(at)  # active; at >= ends_at would start its end instead
            request.grant_ids.append(grant.id)
            request_rows.append(_request_row(request))
            grant_rows.append(_grant_row(grant))
            made.append(grant)
        with container.engine.begin() as conn:
            conn.execute(requests.insert(), request_rows)
            conn.execute(grants.insert(), grant_rows)
        if len(made) % 20_000 < BATCH and len(wanted) >= 20_000:
            progress(f"{label}: inserted {len(made)}/{len(wanted)} active grants")
    elapsed = time.monotonic() - started
    progress(
        f"{label}: inserted {len(made)} active grants in {elapsed:.1f}s "
        f"({len(made) / max(elapsed, 1e-9):.0f}/s)"
    )
    return made


def settle(container: Container, label: str = "bulk") -> None:
    """On PostgreSQL, bring the tables just filled to the state rows that arrived over days
    are in: VACUUM ANALYZE (else the planner has no statistics and picks other plans, e.g. a
    bitmap scan over every active grant for `holding`), then CHECKPOINT (else the next
    seconds of queries evict and write the load's dirty pages themselves: 128 MB of shared
    buffers here; passes of the worker took seconds right after a 100k-row load)."""
    if container.engine.dialect.name != "postgresql":
        return
    started = time.monotonic()
    with container.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE grants, requests, audit_log"))
        conn.execute(text("CHECKPOINT"))
    progress(f"{label}: VACUUM ANALYZE and CHECKPOINT in {time.monotonic() - started:.1f}s")


def accesses(container: Container, made: Sequence[Grant]) -> Iterator[Access]:
    """What the connector would have been given for each grant (to seed the fake connector)."""
    policy = container.current_policy()
    for grant in made:
        yield access_of(policy, grant)


def _chunks(items: Sequence[ActiveGrant], size: int) -> Iterator[Sequence[ActiveGrant]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- audit records -----------------------------------------------------------------------------


def sample_entry(i: int, at: datetime) -> AuditEntry:
    """An audit entry shaped like the worker's `grant.expired` record."""
    return AuditEntry(
        actor="system",
        action="grant.expired",
        subject=f"grt_{i:016x}",
        at=at + timedelta(microseconds=i),
        data={
            "principal": f"user{i % 5000:05d}",
            "role": "prod-db/readonly",
            "ends_at": (at + timedelta(seconds=i)).isoformat(),
            "lag_ms": i % 97,
        },
    )


def append_audit_records(
    engine: Engine, count: int, at: datetime, entry: Callable[[int, datetime], AuditEntry]
) -> None:
    """Chain `count` records onto the head with the product's `seal`, many per INSERT."""
    with engine.begin() as conn:
        head = conn.execute(
            audit_head.select().where(audit_head.c.id == 1).with_for_update()
        ).first()
        if head is None:
            conn.execute(audit_head.insert().values(id=1, seq=0, hash=GENESIS))
        seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS)
        for start in range(0, count, BATCH):
            rows = []
            for i in range(start, min(count, start + BATCH)):
                record = seal(seq, prev_hash, entry(i, at))
                rows.append(
                    record_fields(record.seq, record.entry)
                    | {"prev_hash": record.prev_hash, "hash": record.hash}
                )
                seq, prev_hash = record.seq, record.hash
            conn.execute(audit_log.insert(), rows)
        conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev_hash))


def insert_activating_grant(
    container: Container, version: PolicyVersion, principal: str, role: str
) -> str:
    """One grant due for provisioning now, as an approved request under `version` leaves it;
    returns its id. A worker that has provisioned it has loaded the policy and made a pass."""
    now = container.clock.now()
    request = Request(
        id=new_id("req"),
        requester=principal,
        roles=(role,),
        duration=timedelta(minutes=10),
        justification="bench (sentinel)",
        ticket=None,
        created_at=now,
        policy_version=version.version,
    )
    request.approve(now)
    grant_id = new_id("grt")
    grant = Grant(
        id=grant_id,
        request_id=request.id,
        principal=principal,
        role=role,
        target=version.policy.roles[role].target,
        access_key=access_key(container.connectors, version.policy, grant_id, principal, role),
        starts_at=now,
        ends_at=now + request.duration,
        created_at=now,
    )
    grant.start_activating(now)
    request.grant_ids.append(grant.id)
    with container.engine.begin() as conn:
        conn.execute(requests.insert(), [_request_row(request)])
        conn.execute(grants.insert(), [_grant_row(grant)])
    return grant.id
