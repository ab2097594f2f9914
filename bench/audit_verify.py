"""Audit chain verification rate: `verify_audit` (the use case behind GET /api/v1/audit/verify and
`jitaccess audit verify --db`) over 200,000 records, in records per second, as shipped: seq
ranges on one process per CPU (the calling one included), each streaming its range as stored.

The records are chained by the product's own `seal` and inserted in bulk (bench/bulk.py),
shaped like the worker's `grant.expired` record. Baselines in the same run: hashlib alone
over the same bytes (sha256 of the previous hash and each record's canonical JSON, computed
beforehand), and the same records read from the database without hashing, by the verifier's
read path in one process. Also reported: the same verification in one process (`workers=1`).
"""

from __future__ import annotations

import hashlib
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.bulk import append_audit_records, sample_entry
from bench.setup import jitaccess_stack, progress, run_id
from jitaccess.audit.chain import GENESIS, canonical
from jitaccess.audit.ranges import worker_count
from jitaccess.ports import StoredAuditChain
from jitaccess.services.verify_audit import verify_audit

NAME = "audit_verify"
TARGET_PER_S = 100_000.0


@dataclass(frozen=True)
class Plan:
    records: int


FULL = Plan(records=200_000)
QUICK = Plan(records=20_000)


def policy(run: str) -> str:
    return (
        f"admins: [group:security]\nusers:\n  {run}admin: {{groups: [security]}}\n"
        "targets:\n  bench: {type: fake}\n"
        "roles:\n  bench/read:\n    target: bench\n    grants: {scope: read}\n"
        "    duration: {default: 1h, min: 1s, max: 8h}\n"
        "eligibility:\n  - principals: [group:security]\n    roles: [bench/read]\n"
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    return [measure("postgres", plan), measure("sqlite", plan)]


def measure(store: str, plan: Plan) -> dict[str, Any]:
    run = run_id()
    label = f"{store} store"
    progress(f"{NAME} [{label}]: chaining {plan.records} records (run {run})")
    with ExitStack() as stack:
        bench = stack.enter_context(jitaccess_stack(store, policy(run)))
        container = bench.container
        at = datetime(2026, 1, 1, tzinfo=UTC)
        started = time.monotonic()
        append_audit_records(container.engine, plan.records, at, sample_entry)
        progress(f"{NAME} [{label}]: inserted in {time.monotonic() - started:.1f}s; verifying")
        # Reading first also brings the just-loaded rows to the state of rows read before
        # (PostgreSQL sets their hint bits on the first read), so neither verifier pays for it.
        with container.uow.readonly() as uow:
            assert isinstance(uow.audit, StoredAuditChain)
            started = time.perf_counter()
            with closing(uow.audit.stored()) as stored:
                read = sum(1 for _ in stored)
            read_s = time.perf_counter() - started
        with container.uow.readonly() as uow:
            started = time.perf_counter()
            verification = verify_audit(uow)
            verify_s = time.perf_counter() - started
        with container.uow.readonly() as uow:
            started = time.perf_counter()
            sequential = verify_audit(uow, workers=1)
            sequential_s = time.perf_counter() - started
    # hashlib alone over the bytes verify hashes: the previous hash, then the canonical JSON.
    payloads = []
    prev = GENESIS
    for i in range(plan.records):
        body = canonical(i + 1, sample_entry(i, at))
        payloads.append((prev.encode("ascii"), body))
        prev = hashlib.sha256(prev.encode("ascii") + body).hexdigest()
    started = time.perf_counter()
    for head, body in payloads:
        digest = hashlib.sha256(head)
        digest.update(body)
        digest.hexdigest()
    hash_s = time.perf_counter() - started
    records = verification.records
    rate = records / verify_s if verify_s else 0.0
    hash_rate = len(payloads) / hash_s if hash_s else 0.0
    result = {
        "benchmark": NAME,
        "variant": label,
        "store": store,
        "records": records,
        "ok": verification.ok,
        "verify_s": round(verify_s, 2),
        "records_per_s": round(rate),
        "processes": worker_count(None, records),
        "one_process_s": round(sequential_s, 2),
        "one_process_per_s": round(sequential.records / sequential_s) if sequential_s else 0,
        "same_result_in_one_process": sequential == verification,
        "read_only_s": round(read_s, 2),
        "read_only_per_s": round(read / read_s) if read_s else 0,
        "hashlib_s": round(hash_s, 3),
        "hashlib_per_s": round(hash_rate),
        "bytes_per_record": round(sum(len(h) + len(b) for h, b in payloads) / max(1, records)),
        "ratio": round(rate / hash_rate, 3) if hash_rate else 0.0,
        "target": f">= {TARGET_PER_S:,.0f} records/s",
        "met": verification.ok
        and records >= plan.records
        and rate >= TARGET_PER_S
        and sequential == verification,
    }
    progress(
        f"{NAME} [{label}]: verified {records} records in {verify_s:.2f}s ({rate:,.0f}/s on "
        f"{result['processes']} processes; ok={verification.ok}); in one process "
        f"{result['one_process_per_s']:,}/s; reading them alone {result['read_only_per_s']:,}/s; "
        f"hashlib alone {hash_rate:,.0f}/s"
    )
    return result
