"""Throughput of request + auto-approval + provisioning: several client threads call
`request_access` for a role whose approval is waived by an `auto_approve` rule, while the real
threaded `Worker` provisions each grant through the fake connector. Grants provisioned per
second, on SQLite and on PostgreSQL — with the worker in the same process (as `jitaccess serve`
runs it), and on PostgreSQL also in a process of its own (`jitaccess worker`, as a deployment of
several replicas runs it: README, "Running in production").

Baseline, measured in the same run against the same server (or SQLite on the same disk): the
rows jitaccess ended up with (request, grant, audit records, notifications) inserted again by
the same number of threads with the bare driver into an empty database of the same schema,
one transaction per grant.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extras (types-psutil)
import psycopg
from psycopg.types.json import Json
from sqlalchemy import Table, create_engine, func, select

from bench.check_api import stop
from bench.setup import (
    ForeignLoad,
    Stack,
    jitaccess_stack,
    process_env,
    progress,
    run_id,
    scratch_database,
    summary,
)
from jitaccess.adapters.db.tables import audit_log, grants, metadata, notifications, requests
from jitaccess.bootstrap import Container
from jitaccess.domain.model import Request
from jitaccess.entrypoints.worker import Worker
from jitaccess.services.request_access import request_access

NAME = "throughput"
ROLE = "bench/auto"
TARGET_PER_S = 300.0
TIME_LIMIT = 300.0


@dataclass(frozen=True)
class Plan:
    grants: int
    threads: int = 4


FULL = Plan(grants=1500)
QUICK = Plan(grants=300)


def policy(run: str, users: int) -> str:
    people = "".join(f"  {run}u{i:05d}: {{groups: [engineers]}}\n" for i in range(users))
    return (
        "admins: [group:security]\n"
        f"users:\n  {run}admin: {{groups: [security]}}\n  {run}dba: {{groups: [dba]}}\n{people}"
        "targets:\n  bench: {type: fake}\n"
        f"roles:\n  {ROLE}:\n    target: bench\n    grants: {{scope: read}}\n"
        "    duration: {default: 1h, min: 1s, max: 8h}\n"
        "    approval:\n      stages:\n        - name: dba\n          approvers: [group:dba]\n"
        "      auto_approve:\n        - {groups: [engineers]}\n"
        f"eligibility:\n  - principals: [group:engineers]\n    roles: [{ROLE}]\n"
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    return [
        measure("sqlite", plan),
        measure("postgres", plan),
        measure("postgres", plan, worker_process=True),
    ]


def measure(store: str, plan: Plan, *, worker_process: bool = False) -> dict[str, Any]:
    run = run_id()
    label = f"fake connector, {store} store"
    if worker_process:
        label += ", worker in its own process"
    progress(f"{NAME} [{label}]: {plan.grants} requests from {plan.threads} threads (run {run})")
    # One more user than requests: the warm-up request that shows a worker process is ready.
    with jitaccess_stack(store, policy(run, plan.grants + 1)) as bench:
        if worker_process:
            with _worker_process(bench, f"{run}u{plan.grants:05d}") as worker_cpu:
                jit = _jitaccess(bench, run, plan, label, worker_cpu, already_active=1)
        else:
            worker = Worker(bench.container)
            worker.start()
            try:
                jit = _jitaccess(bench, run, plan, label)
            finally:
                worker.shutdown()
        bundles = list(_bundles(bench))
        raw = _baseline(store, bundles, plan.threads, label)
    ratio = round(jit["grants_per_s"] / raw["grants_per_s"], 3) if raw["grants_per_s"] else 0.0
    result = {
        "benchmark": NAME,
        "variant": label,
        "store": store,
        "grants": plan.grants,
        "threads": plan.threads,
        "jitaccess": jit,
        "raw_inserts": raw,
        "ratio": ratio,
        "worker": "own process" if worker_process else "thread of the same process",
        "target": f">= {TARGET_PER_S:.0f} grants/s",
        "met": jit["provisioned"] == plan.grants and jit["grants_per_s"] >= TARGET_PER_S,
    }
    progress(
        f"{NAME} [{label}]: jitaccess {jit['grants_per_s']:.0f} grants/s "
        f"(requests {jit['requests_per_s']:.0f}/s; CPU a grant: jitaccess "
        f"{jit['jitaccess_cpu_ms_per_grant']} ms, PostgreSQL {jit['postgres_cpu_ms_per_grant']} "
        f"ms); raw inserts {raw['grants_per_s']:.0f}/s; ratio {ratio:.2f}"
    )
    return result


# --- jitaccess ---------------------------------------------------------------------------------


@contextmanager
def _worker_process(bench: Stack, warm_up_user: str) -> Iterator[Callable[[], float]]:
    """`jitaccess worker` on the bench's database, ready (it has provisioned a warm-up grant);
    yields a reading of the CPU seconds it has used."""
    # Its fake target starts empty: drift repair has nothing to find in it.
    env = process_env(bench.container, JITACCESS_RECONCILE_INTERVAL_SECONDS="0")
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "jitaccess.entrypoints.cli", "worker"],
            env=env,
            stdout=output,
            stderr=output,
        )
        try:
            _request(bench.container, warm_up_user)
            started = time.monotonic()
            while _count_active(bench) < 1:
                if process.poll() is not None or time.monotonic() - started > 60:
                    output.seek(0)
                    said = output.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"the worker process did not provision: {said}")
                time.sleep(0.05)
            measured = psutil.Process(process.pid)
            yield lambda: float(sum(measured.cpu_times()[:2]))
        finally:
            stop(process)


def _request(container: Container, who: str) -> None:
    with container.uow() as uow:
        made = request_access(
            uow,
            container.clock,
            container.connectors,
            requester=who,
            roles=[ROLE],
            duration=timedelta(hours=1),
            justification="throughput benchmark",
        )
    assert isinstance(made, Request) and made.grant_ids, made


def _jitaccess(
    bench: Stack,
    run: str,
    plan: Plan,
    label: str,
    worker_cpu: Callable[[], float] = lambda: 0.0,
    already_active: int = 0,
) -> dict[str, Any]:
    """Requests from the client threads until all are made; then waits until all are active.
    CPU: this process (the clients, and the worker when it runs here) and `worker_cpu`."""
    container = bench.container
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for i in range(plan.grants):
        todo.put(f"{run}u{i:05d}")
    errors: list[str] = []

    def client() -> None:
        while True:
            try:
                who = todo.get_nowait()
            except queue.Empty:
                return
            try:
                _request(container, who)
            except Exception as error:  # counted and reported, never fatal
                errors.append(f"{type(error).__name__}: {error}")

    started_wall, started = datetime.now(UTC), time.monotonic()
    cpu_before, worker_before, others = time.process_time(), worker_cpu(), ForeignLoad()
    threads = [
        threading.Thread(target=client, name=f"bench-client-{i}") for i in range(plan.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requested = time.monotonic() - started
    active = 0
    last_print = time.monotonic()
    while time.monotonic() - started < TIME_LIMIT:
        active = _count_active(bench) - already_active
        if active >= plan.grants - len(errors):
            break
        if time.monotonic() - last_print >= 5:
            progress(f"{NAME} [{label}]: {active}/{plan.grants} active")
            last_print = time.monotonic()
        time.sleep(0.05)
    # jitaccess: this process (the client threads, and the worker if it runs here; nothing else
    # runs here) and the worker's own process.
    cpu = time.process_time() - cpu_before + worker_cpu() - worker_before
    load, elapsed_all = others.cores(), time.monotonic() - started
    with container.engine.connect() as conn:
        # Those of this measurement: a warm-up grant was provisioned before it started.
        provisioned_by_grant = {
            row.subject: row.at
            for row in conn.execute(
                select(audit_log.c.subject, audit_log.c.at).where(
                    audit_log.c.action == "grant.provisioned", audit_log.c.at >= started_wall
                )
            )
        }
        created = {
            row.id: row.created_at for row in conn.execute(select(grants.c.id, grants.c.created_at))
        }
    provisioned_at = list(provisioned_by_grant.values())
    last = max(provisioned_at, default=started_wall)
    elapsed = (last - started_wall).total_seconds()
    latencies = [
        (at - created[gid]).total_seconds() * 1000 for gid, at in provisioned_by_grant.items()
    ]
    return {
        "provisioned": len(provisioned_at),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(elapsed, 2),
        "grants_per_s": round(len(provisioned_at) / elapsed, 1) if elapsed > 0 else 0.0,
        "requests_per_s": round(plan.grants / requested, 1) if requested > 0 else 0.0,
        "request_to_provisioned_ms": summary(latencies),
        "jitaccess_cpu_ms_per_grant": round(cpu * 1000 / max(1, len(provisioned_at)), 2),
        "postgres_cpu_ms_per_grant": round(
            load["postgres_cores"] * elapsed_all * 1000 / max(1, len(provisioned_at)), 2
        ),
        "other_processes_cores": load["cores"],
    }


def _count_active(bench: Stack) -> int:
    with bench.container.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(grants).where(grants.c.state == "active")
            ).scalar_one()
        )


# --- the baseline ------------------------------------------------------------------------------

Row = dict[str, Any]


@dataclass(frozen=True)
class Bundle:
    """Every row one granted request left in the database, table by table."""

    rows: tuple[tuple[Table, Row], ...]


def _bundles(bench: Stack) -> Iterator[Bundle]:
    with bench.container.engine.connect() as conn:
        by_request = {r.id: dict(r._mapping) for r in conn.execute(select(requests))}
        audit_by_subject: dict[str, list[Row]] = {}
        for r in conn.execute(select(audit_log).order_by(audit_log.c.seq)):
            audit_by_subject.setdefault(r.subject, []).append(dict(r._mapping))
        notes_by_subject: dict[str, list[Row]] = {}
        for r in conn.execute(select(notifications)):
            notes_by_subject.setdefault(r.subject, []).append(dict(r._mapping))
        every_grant = [dict(r._mapping) for r in conn.execute(select(grants))]
    for grant in every_grant:
        request = by_request[grant["request_id"]]
        rows: list[tuple[Table, Row]] = [(requests, request), (grants, grant)]
        for subject in (request["id"], grant["id"]):
            rows += [(audit_log, row) for row in audit_by_subject.get(subject, [])]
            rows += [(notifications, row) for row in notes_by_subject.get(subject, [])]
        yield Bundle(tuple(rows))


def _plain(value: Any, json_value: Callable[[Any], Any]) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, dict | list):
        return json_value(value)
    return value


def _statement(table: Table, row: Mapping[str, Any], marker: str) -> str:
    columns = ", ".join(row)
    return f"INSERT INTO {table.name} ({columns}) VALUES ({', '.join([marker] * len(row))})"


def _baseline(store: str, bundles: Sequence[Bundle], threads: int, label: str) -> dict[str, Any]:
    with _empty_schema(store) as connect:
        todo: queue.SimpleQueue[Bundle] = queue.SimpleQueue()
        for bundle in bundles:
            todo.put(bundle)
        marker = "%s" if store == "postgres" else "?"
        json_value: Callable[[Any], Any] = Json if store == "postgres" else json.dumps

        def inserter() -> None:
            with connect() as execute_in_transaction:
                while True:
                    try:
                        bundle = todo.get_nowait()
                    except queue.Empty:
                        return
                    execute_in_transaction(
                        [
                            (
                                _statement(table, row, marker),
                                [_plain(v, json_value) for v in row.values()],
                            )
                            for table, row in bundle.rows
                        ]
                    )

        started = time.monotonic()
        workers = [threading.Thread(target=inserter) for _ in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        elapsed = time.monotonic() - started
    rows = sum(len(b.rows) for b in bundles)
    progress(
        f"{NAME} [{label}]: baseline inserted {rows} rows for {len(bundles)} grants in "
        f"{elapsed:.1f}s"
    )
    return {
        "grants": len(bundles),
        "rows": rows,
        "rows_per_grant": round(rows / len(bundles), 2) if bundles else 0,
        "seconds": round(elapsed, 2),
        "grants_per_s": round(len(bundles) / elapsed, 1) if elapsed > 0 else 0.0,
    }


Executor = Callable[[list[tuple[str, list[Any]]]], None]


@contextmanager
def _empty_schema(store: str) -> Iterator[Callable[[], Any]]:
    """An empty database with jitaccess's tables and indexes; yields a factory of per-thread
    connections, each a context manager giving `execute_in_transaction(statements)`."""
    if store == "postgres":
        with scratch_database("jit_bench_raw") as dsn:
            engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
            metadata.create_all(engine)
            engine.dispose()

            @contextmanager
            def pg() -> Iterator[Executor]:
                with psycopg.connect(dsn) as conn:

                    def execute(statements: list[tuple[str, list[Any]]]) -> None:
                        with conn.transaction(), conn.cursor() as cursor:
                            for text, params in statements:
                                cursor.execute(text.encode(), params)

                    yield execute

            yield pg
        return
    with tempfile.TemporaryDirectory(prefix="jit_bench_raw_") as tmp:
        path = Path(tmp) / "raw.db"
        engine = create_engine(f"sqlite:///{path}")
        metadata.create_all(engine)
        engine.dispose()

        @contextmanager
        def lite() -> Iterator[Executor]:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            try:
                # The pragmas jitaccess sets on its own SQLite connections.
                for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
                    conn.execute(f"PRAGMA {pragma}")

                def execute(statements: list[tuple[str, list[Any]]]) -> None:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for text, params in statements:
                            conn.execute(text, params)
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise

                yield execute
            finally:
                conn.close()

        yield lite
