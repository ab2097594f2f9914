"""Activation latency: request + approval + provisioning through jitaccess, against the raw SQL
the postgres connector runs, measured alternately in the same run against the same server.

jitaccess path: `request_access` (a role with one approval stage), `decide_request` by an
approver, then wait until the running `Worker` has made the grant `active`. The wait is hooked,
not polled: every commit signals, and the bench reads the grant through a read-only unit of work.
Baseline: one psycopg connection runs CREATE ROLE … LOGIN PASSWORD … VALID UNTIL …, GRANT and
COMMENT ON ROLE in one transaction (dropping the role afterwards is not timed).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.setup import (
    TARGET_ENV,
    Stack,
    jitaccess_stack,
    progress,
    run_id,
    summary,
    target_database,
)
from jitaccess.domain.model import Decision, GrantState, Request
from jitaccess.entrypoints.worker import Worker
from jitaccess.services.decide_request import decide_request
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkReport

NAME = "activation_latency"
ROLE = "bench/approved"
TARGET_RATIO = 3.0
WAIT_LIMIT = 30.0  # seconds; a grant not active by then is reported as not activated


@dataclass(frozen=True)
class Plan:
    iterations: int
    warmup: int = 5  # untimed rounds first: connection pools, policy cache, imports


FULL = Plan(iterations=100)
QUICK = Plan(iterations=50)


def policy(run: str, group_role: str) -> str:
    return (
        "admins: [group:security]\n"
        f"users:\n  {run}alice: {{groups: [engineers]}}\n  {run}bob: {{groups: [dba]}}\n"
        f"  {run}sam: {{groups: [security]}}\n"
        f"targets:\n  bench: {{type: postgres, connection: {{env: {TARGET_ENV}}}}}\n"
        f"roles:\n  {ROLE}:\n    target: bench\n"
        f"    grants: {{postgres_roles: [{group_role}]}}\n"
        "    duration: {default: 10m, min: 1s, max: 1h}\n"
        "    approval:\n      stages:\n        - name: dba\n          approvers: [group:dba]\n"
        f"eligibility:\n  - principals: [group:engineers]\n    roles: [{ROLE}]\n"
    )


@dataclass(frozen=True)
class Activation:
    """time.time() at each step of one request's way to an active grant."""

    grant_id: str
    started: float
    requested: float
    approved: float
    active_seen: float | None


class ProfiledWorker(Worker):
    """The real worker, with each pass run under cProfile (only with --profile: the profiler
    slows the code it watches, so profiled figures are not the reported ones)."""

    def __init__(self, container: Any, profile: cProfile.Profile) -> None:
        super().__init__(container)
        self.profile = profile

    def run_once(self) -> WorkReport:
        self.profile.enable()
        try:
            return super().run_once()
        finally:
            self.profile.disable()


def run(quick: bool = False, profile_dir: Path | None = None) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    return [measure(store, plan, profile_dir) for store in ("sqlite", "postgres")]


def measure(store: str, plan: Plan, profile_dir: Path | None = None) -> dict[str, Any]:
    run = run_id()
    label = f"{store} store"
    progress(f"{NAME} [{label}]: setting up (run {run})")
    with ExitStack() as stack:
        target = stack.enter_context(target_database(run))
        os.environ[TARGET_ENV] = target.url
        bench = stack.enter_context(jitaccess_stack(store, policy(run, target.group_role)))
        in_worker, in_bench = cProfile.Profile(), cProfile.Profile()
        worker = (
            Worker(bench.container)
            if profile_dir is None
            else ProfiledWorker(bench.container, in_worker)
        )
        worker.start()
        stack.callback(worker.shutdown)
        raw = stack.enter_context(psycopg.connect(target.dsn, autocommit=True))
        activations: list[Activation] = []
        baseline: list[float] = []
        passes_before = 0
        for i in range(plan.warmup + plan.iterations):
            if i == plan.warmup:
                passes_before = worker.passes
            # Alternate which goes first so neither always runs on a freshly idle machine.
            raw_ms: list[float] = []
            if i % 2:
                raw_ms.append(_raw(raw, run, target.group_role, i))
            if profile_dir is not None and i >= plan.warmup:
                in_bench.enable()
            activation = _jitaccess(bench, run)
            in_bench.disable()
            if not i % 2:
                raw_ms.append(_raw(raw, run, target.group_role, i))
            if i >= plan.warmup:
                activations.append(activation)
                baseline.extend(raw_ms)
            done = i + 1 - plan.warmup
            if done > 0 and (done % 50 == 0 or done == plan.iterations):
                progress(f"{NAME} [{label}]: {done}/{plan.iterations} iterations")
        worker.shutdown()
        passes = worker.passes - passes_before
        if profile_dir is not None:
            _write_profile(profile_dir / f"activation_profile_{store}.txt", in_bench, in_worker)
        return _report(bench, activations, baseline, label, passes)
    raise AssertionError("unreachable")


def _write_profile(path: Path, in_bench: cProfile.Profile, in_worker: cProfile.Profile) -> None:
    out = io.StringIO()
    for title, profile in (
        ("request_access + decide_request + wait (bench thread)", in_bench),
        ("worker passes (jit-worker thread; provisioning runs inline for one grant)", in_worker),
    ):
        out.write(f"=== {title} ===\n")
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("cumulative").print_stats(40)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out.getvalue())
    progress(f"{NAME}: profile written to {path}")


def _jitaccess(bench: Stack, run: str) -> Activation:
    container = bench.container
    started = time.time()
    with container.uow() as uow:
        request = request_access(
            uow,
            container.clock,
            container.connectors,
            requester=f"{run}alice",
            roles=[ROLE],
            duration=timedelta(minutes=10),
            justification="activation latency benchmark",
        )
    requested = time.time()
    assert isinstance(request, Request)
    with container.uow() as uow:
        decided = decide_request(
            uow,
            container.clock,
            container.connectors,
            request_id=request.id,
            approver=f"{run}bob",
            decision=Decision.APPROVE,
            comment="ok",
        )
    approved = time.time()
    grant_id = decided.grant_ids[0]
    active_seen = None
    while time.time() - approved < WAIT_LIMIT:
        generation = bench.signal.generation  # before the read, so no commit slips between
        with container.uow.readonly() as uow:
            grant = uow.grants.get(grant_id)
        if grant is not None and grant.state is GrantState.ACTIVE:
            active_seen = time.time()
            break
        bench.signal.wait_past(generation, timeout=0.5)
    return Activation(grant_id, started, requested, approved, active_seen)


def _raw(conn: psycopg.Connection[Any], run: str, group_role: str, i: int) -> float:
    """What the connector does to provision, as one hand-written transaction; in ms."""
    name = sql.Identifier(f"jit_{run}raw_{i:04d}")
    until = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    started = time.perf_counter()
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {}").format(
                name, sql.Literal(secrets.token_urlsafe(24)), sql.Literal(until)
            )
        )
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group_role), name))
        conn.execute(
            sql.SQL("COMMENT ON ROLE {} IS {}").format(name, sql.Literal(f"bench raw {i}"))
        )
    elapsed = (time.perf_counter() - started) * 1000
    conn.execute(sql.SQL("DROP ROLE {}").format(name))
    return elapsed


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def _report(
    bench: Stack, activations: list[Activation], baseline: list[float], label: str, passes: int
) -> dict[str, Any]:
    done = [a for a in activations if a.active_seen is not None]
    total = [((a.active_seen or 0) - a.started) * 1000 for a in done]
    provisions = bench.connectors.log.of("provision")
    steps: dict[str, list[float]] = {
        "request_access": [],
        "decide_request": [],
        "approve_to_provision_start": [],
        "connector_provision": [],
        "provision_to_active_seen": [],
    }
    for a in done:
        steps["request_access"].append((a.requested - a.started) * 1000)
        steps["decide_request"].append((a.approved - a.requested) * 1000)
        call = provisions.get(a.grant_id)
        if call is not None and a.active_seen is not None:
            steps["approve_to_provision_start"].append((call.started - a.approved) * 1000)
            steps["connector_provision"].append((call.finished - call.started) * 1000)
            steps["provision_to_active_seen"].append((a.active_seen - call.finished) * 1000)
    jit, raw = summary(total), summary(baseline)
    ratio = {"p50": _ratio(jit["p50"], raw["p50"]), "p99": _ratio(jit["p99"], raw["p99"])}
    result: dict[str, Any] = {
        "benchmark": NAME,
        "variant": label,
        "store": bench.store,
        "iterations": len(activations),
        "not_activated": len(activations) - len(done),
        "jitaccess_ms": jit,
        "raw_sql_ms": raw,
        "ratio": ratio,
        "target": f"ratio <= {TARGET_RATIO:.0f}x",
        "met": not (len(done) < len(activations))
        and ratio["p50"] <= TARGET_RATIO
        and ratio["p99"] <= TARGET_RATIO,
        "breakdown_ms": {step: summary(values) for step, values in steps.items()},
        # Passes of the worker loop while timed; one per activation would be the minimum.
        "worker_passes": passes,
    }
    progress(
        f"{NAME} [{label}]: jitaccess p50 {jit['p50']:.1f} ms p99 {jit['p99']:.1f} ms; "
        f"raw SQL p50 {raw['p50']:.1f} ms p99 {raw['p99']:.1f} ms; "
        f"ratio p50 {ratio['p50']}x p99 {ratio['p99']}x; the worker made {passes} passes "
        f"for {len(done)} activations"
    )
    return result
