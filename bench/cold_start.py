"""Cold-start recovery: a worker starts while 10,000 grants are already past their end (stored as
`active`, `ends_at` in the past: the worker was down). How long until every one is ended, and
at what rate?

The grants are written in bulk (bench/bulk.py); the real threaded `Worker` ends them through
the fake connector. Time 0 is `Worker.start()`; a grant's time is its `ended_at`.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from bench.bulk import ActiveGrant, accesses, insert_active_grants, settle
from bench.setup import TimedWorker, jitaccess_stack, progress, run_id, summary
from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.adapters.db.tables import grants

NAME = "cold_start"
ROLE = "bench/read"
TIME_LIMIT = 300.0  # seconds; grants not ended by then are reported


@dataclass(frozen=True)
class Plan:
    grants: int


FULL = Plan(grants=10_000)
QUICK = Plan(grants=1_000)


def policy(run: str) -> str:
    return (
        f"admins: [group:security]\nusers:\n  {run}admin: {{groups: [security]}}\n"
        "targets:\n  bench: {type: fake}\n"
        f"roles:\n  {ROLE}:\n    target: bench\n    grants: {{scope: read}}\n"
        "    duration: {default: 1h, min: 1s, max: 8h}\n"
        f"eligibility:\n  - principals: [group:security]\n    roles: [{ROLE}]\n"
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    return [measure("postgres", plan), measure("sqlite", plan)]


def measure(store: str, plan: Plan) -> dict[str, Any]:
    run = run_id()
    label = f"fake connector, {store} store"
    progress(f"{NAME} [{label}]: {plan.grants} grants past their end (run {run})")
    with ExitStack() as stack:
        bench = stack.enter_context(jitaccess_stack(store, policy(run)))
        container = bench.container
        now = datetime.now(UTC)
        # Created two hours ago for one hour, the ends spread over the last hour.
        wanted = [
            ActiveGrant(
                principal=f"{run}p{i:06d}",
                created_at=now - timedelta(hours=2),
                ends_at=now - timedelta(hours=1) + timedelta(seconds=3600 * i / plan.grants),
            )
            for i in range(plan.grants)
        ]
        made = insert_active_grants(container, ROLE, wanted, f"{NAME} [{label}]")
        settle(container, f"{NAME} [{label}]")
        fake = bench.connectors.inner(container.current_policy().targets["bench"])
        assert isinstance(fake, FakeConnector)
        for access in accesses(container, made):
            fake.provision(access)
        worker = TimedWorker(container)
        started_wall, started = datetime.now(UTC), time.monotonic()
        worker.start()
        stack.callback(worker.shutdown)
        ended = 0
        last_print = started
        while time.monotonic() - started < TIME_LIMIT:
            ended = _ended(container.engine)
            if ended >= plan.grants:
                break
            if time.monotonic() - last_print >= 5:
                progress(f"{NAME} [{label}]: {ended}/{plan.grants} ended")
                last_print = time.monotonic()
            time.sleep(0.05)
        worker.shutdown()
        with container.engine.connect() as conn:
            ended_at = [
                row[0]
                for row in conn.execute(
                    select(grants.c.ended_at).where(grants.c.ended_at.is_not(None))
                )
            ]
        after = sorted((at - started_wall).total_seconds() for at in ended_at)
        total = after[-1] if after else float("nan")
        rate = len(after) / total if after and total > 0 else 0.0
        still_present = sum(1 for g in made if fake.has(g.principal, g.role))
        result = {
            "benchmark": NAME,
            "variant": label,
            "store": store,
            "grants": plan.grants,
            "ended": len(after),
            "all_ended_s": round(total, 2),
            "rate_per_s": round(rate, 1),
            "ended_after_start_ms": summary([a * 1000 for a in after]),
            "still_present_in_target": still_present,
            "worker_passes": worker.passes,
            "worker": worker.summary(),
            "target": "",
            "met": len(after) == plan.grants and still_present == 0,
        }
        progress(
            f"{NAME} [{label}]: {len(after)}/{plan.grants} ended {total:.1f}s after the worker "
            f"started ({rate:.0f}/s; {worker.passes} passes); {still_present} left in the target"
        )
        return result
    raise AssertionError("unreachable")


def _ended(engine: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(grants).where(grants.c.ended_at.is_not(None))
            ).scalar_one()
        )
