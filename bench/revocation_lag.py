"""Revocation lag: how long after a grant's end its access is confirmed gone, revoked by the real
threaded `Worker`.

- 1,000 grants made through `request_access` (provisioned by the worker) that end over 20 s:
  with the postgres connector on a PostgreSQL store, and with the fake connector on SQLite.
- 1,000 / 10,000 / 100,000 active grants written in bulk (bench/bulk.py) on a PostgreSQL
  store with the fake connector, of which 1,000 end over 20 s (50/s, the rate of the first
  case) while the others stay active: the lag at that many active grants.

Lag of a grant = `ended_at` (written only after the connector confirmed the revoke) - `ends_at`.
A poller thread independently watches a sample of the accounts in the target itself.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import func, select

from bench.bulk import ActiveGrant, accesses, insert_active_grants, settle
from bench.setup import (
    TARGET_ENV,
    Stack,
    TimedWorker,
    WaitSampler,
    database_of,
    grant_states,
    jitaccess_stack,
    progress,
    run_id,
    summary,
    target_database,
)
from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.adapters.connectors.postgres import login_role_name
from jitaccess.adapters.db.tables import grants
from jitaccess.bootstrap import Container
from jitaccess.domain.model import Grant, GrantState, Request
from jitaccess.entrypoints.worker import Worker
from jitaccess.services.request_access import request_access

NAME = "revocation_lag"
ROLE = "bench/read"
TARGET_P99_MS = 1000.0


@dataclass(frozen=True)
class Plan:
    grants: int
    window: float  # seconds over which the ends are spread
    sampled: int  # grants the poller watches in the target
    poll_interval: float = 0.005

    def lead(self, store: str) -> float:
        """Seconds from the first request to the first end: room to create and provision every
        grant first (PostgreSQL took 17-23 ms a request here, SQLite ~5 ms), plus a margin."""
        per_grant = 0.035 if store == "postgres" else 0.01
        return 5.0 + per_grant * self.grants


FULL = Plan(grants=1000, window=20.0, sampled=50)
QUICK = Plan(grants=200, window=6.0, sampled=20)


@dataclass(frozen=True)
class BulkPlan:
    """`active` grants written in bulk; `ending` of them end over `window` seconds starting
    `lead` seconds after they are written, the others an hour or more later."""

    active: int
    ending: int
    window: float
    sampled: int
    lead: float = 4.0
    poll_interval: float = 0.005


FULL_BULK = (
    BulkPlan(active=1_000, ending=1_000, window=20.0, sampled=50),
    BulkPlan(active=10_000, ending=1_000, window=20.0, sampled=50),
    BulkPlan(active=100_000, ending=1_000, window=20.0, sampled=50),
)
WARM_UP = 16  # grants ending 2 s before the window of a bulk variant, not measured
QUICK_BULK = (BulkPlan(active=10_000, ending=200, window=6.0, sampled=20),)


def policy(run: str, grants: int, target: str, role_grants: str) -> str:
    """`grants` principals `<run>u0000`… eligible, without approval, for one role on `target`."""
    users = "".join(f"  {run}u{i:04d}: {{groups: [engineers]}}\n" for i in range(grants))
    return (
        f"admins: [group:security]\nusers:\n  {run}admin: {{groups: [security]}}\n{users}"
        f"targets:\n  bench: {target}\n"
        f"roles:\n  {ROLE}:\n    target: bench\n    grants: {role_grants}\n"
        "    duration: {default: 1m, min: 1s, max: 1h}\n"
        f"eligibility:\n  - principals: [group:engineers]\n    roles: [{ROLE}]\n"
    )


# --- watching the target -----------------------------------------------------------------------


@dataclass
class Poller:
    """Checks which sampled accounts still exist, every `interval`, and notes when each goes."""

    accounts: dict[str, str]  # grant id -> account name in the target
    still_there: Callable[[Sequence[str]], set[str]]
    interval: float
    gone_at: dict[str, float] = field(default_factory=dict)  # grant id -> time.time()
    missing_at_start: set[str] = field(default_factory=set)
    polls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        watching = dict(self.accounts)
        first = True
        while watching and not self._stop.is_set():
            present = self.still_there(list(watching.values()))
            seen = time.time()  # an upper bound: the account was gone when the query ran
            self.polls += 1
            for grant_id, account in list(watching.items()):
                if account not in present:
                    if first:
                        self.missing_at_start.add(grant_id)
                    self.gone_at[grant_id] = seen
                    del watching[grant_id]
            first = False
            self._stop.wait(self.interval)


def postgres_presence(dsn: str) -> tuple[Callable[[Sequence[str]], set[str]], Callable[[], None]]:
    conn = psycopg.connect(dsn, autocommit=True)

    def still_there(names: Sequence[str]) -> set[str]:
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(names)]
        ).fetchall()
        return {str(r[0]) for r in rows}

    return still_there, conn.close


def fake_presence(connector: FakeConnector) -> Callable[[Sequence[str]], set[str]]:
    def still_there(accounts: Sequence[str]) -> set[str]:
        # FakeConnector.account() is "principal@role"; principals here contain no "@".
        return {a for a in accounts if connector.has(*a.split("@", 1))}

    return still_there


# --- the benchmark -----------------------------------------------------------------------------


def run(quick: bool = False) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    results = [measure("postgres", "postgres", plan), measure("sqlite", "fake", plan)]
    for bulk in QUICK_BULK if quick else FULL_BULK:
        results.append(measure_bulk("postgres", bulk))
    return results


def measure(store: str, connector: str, plan: Plan) -> dict[str, Any]:
    run = run_id()
    label = f"{connector} connector, {store} store"
    progress(f"{NAME} [{label}]: setting up {plan.grants} principals (run {run})")
    with ExitStack() as stack:
        if connector == "postgres":
            target = stack.enter_context(target_database(run))
            os.environ[TARGET_ENV] = target.url
            target_block = f"{{type: postgres, connection: {{env: {TARGET_ENV}}}}}"
            role_grants = f"{{postgres_roles: [{target.group_role}]}}"
        else:
            target_block, role_grants = "{type: fake}", "{scope: read}"
        text = policy(run, plan.grants, target_block, role_grants)
        bench = stack.enter_context(jitaccess_stack(store, text))
        worker = Worker(bench.container)
        worker.start()
        stack.callback(worker.shutdown)
        return _measure(bench, run, connector, plan, label, worker)
    raise AssertionError("unreachable")


def _measure(
    bench: Stack, run: str, connector: str, plan: Plan, label: str, worker: Worker
) -> dict[str, Any]:
    container = bench.container
    clock = container.clock
    started = time.monotonic()
    first_end = clock.now() + timedelta(seconds=plan.lead(bench.store))
    step = plan.window / plan.grants
    grant_ids: list[str] = []
    for i in range(plan.grants):
        ends_at = first_end + timedelta(seconds=i * step)
        with container.uow() as uow:
            request = request_access(
                uow,
                clock,
                container.connectors,
                requester=f"{run}u{i:04d}",
                roles=[ROLE],
                duration=ends_at - clock.now(),
                justification="revocation lag benchmark",
            )
        assert isinstance(request, Request)
        grant_ids.extend(request.grant_ids)
    created = time.monotonic() - started
    progress(
        f"{NAME} [{label}]: created {len(grant_ids)} grants in {created:.1f}s "
        f"({len(grant_ids) / created:.0f}/s); ends spread over {plan.window:.0f}s "
        f"starting {(first_end - clock.now()).total_seconds():.1f}s from now"
    )

    states = _wait(container, lambda s: s.get("active", 0) >= plan.grants, first_end, label)
    active_at = clock.now()
    margin = (first_end - active_at).total_seconds()
    progress(
        f"{NAME} [{label}]: {states.get('active', 0)}/{plan.grants} grants active "
        f"{time.monotonic() - started:.1f}s after the first request, "
        f"{margin:.1f}s before the first end"
    )

    sample = _sample(grant_ids, plan.sampled)
    poller, close = _poller(bench, connector, sample, plan)
    poller.start()
    waits = _wait_sampler(container)
    passes_before = worker.passes
    deadline = first_end + timedelta(seconds=plan.window + 120)
    try:
        states = _wait(container, lambda s: s.get("expired", 0) >= plan.grants, deadline, label)
    finally:
        poller.stop()
        close()
    waited = waits.stop() if waits else None
    passes = worker.passes - passes_before
    progress(
        f"{NAME} [{label}]: grants by state {states}; the worker made {passes} passes, "
        f"the poller {poller.polls} checks"
    )
    grants = _grants(bench, grant_ids)
    result = _report(bench, grants, poller, plan.poll_interval, label, connector, margin)
    result.update(grants=plan.grants, window_s=plan.window, created_by="request_access")
    result["database_waits"] = waited
    result["worker_passes"] = passes
    return result


def measure_bulk(store: str, plan: BulkPlan) -> dict[str, Any]:
    run = run_id()
    label = f"fake connector, {store} store, {plan.active:,} active"
    progress(f"{NAME} [{label}]: {plan.active} active grants, {plan.ending} ending over "
             f"{plan.window:.0f}s (run {run})")  # fmt: skip
    with ExitStack() as stack:
        text = policy(run, 1, "{type: fake}", "{scope: read}")
        bench = stack.enter_context(jitaccess_stack(store, text))
        container = bench.container
        now = datetime.now(UTC)
        staying = [
            ActiveGrant(f"{run}s{i:06d}", now, now + timedelta(hours=1, seconds=i % 3600))
            for i in range(plan.active - plan.ending)
        ]
        made = insert_active_grants(container, ROLE, staying, f"{NAME} [{label}]")
        settle(container, f"{NAME} [{label}]")
        target = container.current_policy().targets["bench"]
        fake = bench.connectors.inner(target)
        assert isinstance(fake, FakeConnector)
        for access in accesses(container, made):
            fake.provision(access)
        del made
        # The measured grants last, so the window starts `lead` seconds after everything else.
        first_end = datetime.now(UTC) + timedelta(seconds=plan.lead)
        step = plan.window / plan.ending
        ending = [
            ActiveGrant(f"{run}e{i:06d}", now, first_end + timedelta(seconds=i * step))
            for i in range(plan.ending)
        ]
        # Not measured: they end just before the window, so that the worker's connections
        # and statement caches are warm, as in a worker that has been running for a while.
        warm_up = [
            ActiveGrant(f"{run}w{i:06d}", now, first_end - timedelta(seconds=2 - i / 8))
            for i in range(WARM_UP)
        ]
        measured = insert_active_grants(container, ROLE, ending, f"{NAME} [{label}]")
        warming = insert_active_grants(container, ROLE, warm_up, f"{NAME} [{label}] warm-up")
        for access in accesses(container, [*measured, *warming]):
            fake.provision(access)
        # This process also holds what a deployment's worker does not: the bulk load's data
        # and the fake target's 100,000 accounts (in a deployment, the target's own server
        # holds them). Frozen, so the collector's full passes walk only what the product holds,
        # as they would in a worker of its own.
        gc.collect()
        gc.freeze()
        stack.callback(gc.unfreeze)
        worker = TimedWorker(container)
        worker.start()
        stack.callback(worker.shutdown)
        margin = (first_end - datetime.now(UTC)).total_seconds()
        grant_ids = [g.id for g in measured]
        sample = _sample(grant_ids, plan.sampled)
        accounts = {g.id: f"{g.principal}@{g.role}" for g in measured if g.id in set(sample)}
        poller = Poller(accounts, fake_presence(fake), plan.poll_interval)
        poller.start()
        waits = _wait_sampler(container)
        deadline = first_end + timedelta(seconds=plan.window + 300)
        try:
            _wait(
                container,
                lambda s: s.get("expired", 0) >= plan.ending + WARM_UP,
                deadline,
                label,
                _expired_count,  # not a GROUP BY over every grant five times a second
            )
        finally:
            poller.stop()
        waited = waits.stop() if waits else None
        worker.shutdown()
        states = grant_states(container)
        progress(
            f"{NAME} [{label}]: grants by state {states}; the worker made {worker.passes} "
            f"passes, the poller {poller.polls} checks"
        )
        result = _report(
            bench, _grants(bench, grant_ids), poller, plan.poll_interval, label, "fake", margin
        )
        result.update(
            grants=plan.ending,
            active=plan.active,
            warm_up_grants=WARM_UP,
            window_s=plan.window,
            created_by="bulk",
            still_active=states.get("active", 0),
            worker_passes=worker.passes,
            worker=worker.summary(since=first_end.timestamp() - 0.5),
            database_waits=waited,
        )
        return result
    raise AssertionError("unreachable")


def _wait_sampler(container: Container) -> WaitSampler | None:
    database = database_of(container)
    if database is None:
        return None
    sampler = WaitSampler(database)
    sampler.start()
    return sampler


def _expired_count(container: Container) -> dict[str, int]:
    with container.engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(grants).where(grants.c.state == "expired")
        ).scalar_one()
    return {"expired": int(count)}


def _sample(grant_ids: list[str], count: int) -> list[str]:
    stride = max(1, len(grant_ids) // count)
    return grant_ids[::stride][:count]


def _poller(
    bench: Stack, connector: str, sample: list[str], plan: Plan
) -> tuple[Poller, Callable[[], None]]:
    grants = {g.id: g for g in _grants(bench, sample)}
    if connector == "postgres":
        still_there, close = postgres_presence(os.environ[TARGET_ENV])
        accounts = {g: login_role_name(grants[g].principal, g) for g in sample}
    else:
        target = bench.container.current_policy().targets["bench"]
        inner = bench.connectors.inner(target)
        assert isinstance(inner, FakeConnector)
        still_there, close = fake_presence(inner), (lambda: None)
        accounts = {g: f"{grants[g].principal}@{grants[g].role}" for g in sample}
    return Poller(accounts, still_there, plan.poll_interval), close


def _grants(bench: Stack, grant_ids: list[str]) -> list[Grant]:
    found: list[Grant] = []
    with bench.container.uow.readonly() as uow:
        for grant_id in grant_ids:
            grant = uow.grants.get(grant_id)
            if grant is not None:
                found.append(grant)
    return found


def _wait(
    container: Container,
    done: Callable[[dict[str, int]], bool],
    deadline: datetime,
    label: str,
    states_of: Callable[[Container], dict[str, int]] = grant_states,
) -> dict[str, int]:
    last_print = time.monotonic()
    while True:
        states = states_of(container)
        if done(states) or datetime.now(UTC) > deadline:
            return states
        if time.monotonic() - last_print >= 5:
            progress(f"{NAME} [{label}]: grants by state {states}")
            last_print = time.monotonic()
        time.sleep(0.2)


def _ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


def _report(
    bench: Stack,
    grants: list[Grant],
    poller: Poller,
    poll_interval: float,
    label: str,
    connector: str,
    margin: float,
) -> dict[str, Any]:
    ended = [g for g in grants if g.ended_at is not None and g.state is GrantState.EXPIRED]
    lags = [_ms(g.ended_at - g.ends_at) for g in ended if g.ended_at is not None]
    by_id = {g.id: g for g in grants}
    revokes = bench.connectors.log.of("revoke")
    waited, in_target, recorded = [], [], []
    for g in ended:
        call = revokes.get(g.id)
        if call is None or g.ended_at is None:
            continue
        waited.append(call.started * 1000 - g.ends_at.timestamp() * 1000)
        in_target.append((call.finished - call.started) * 1000)
        recorded.append(g.ended_at.timestamp() * 1000 - call.finished * 1000)
    observed = {
        gid: gone * 1000 - by_id[gid].ends_at.timestamp() * 1000
        for gid, gone in poller.gone_at.items()
        if gid not in poller.missing_at_start
    }
    beyond = [
        gid
        for gid, lag in observed.items()
        if (ended_at := by_id[gid].ended_at) is not None
        and lag > _ms(ended_at - by_id[gid].ends_at) + 1000 * poll_interval + 50
    ]
    stats = summary(lags)
    first_end = min((g.ends_at for g in ended), default=None)
    result: dict[str, Any] = {
        "benchmark": NAME,
        "variant": label,
        "connector": connector,
        "store": bench.store,
        "ended": len(ended),
        "not_ended": len(grants) - len(ended),
        "active_margin_s": round(margin, 1),
        "lag_ms": stats,
        "target": f"p99 <= {TARGET_P99_MS:.0f} ms",
        "met": bool(ended) and len(ended) == len(grants) and stats["p99"] <= TARGET_P99_MS,
        "breakdown_ms": {
            "end_to_revoke_start": summary(waited),
            "connector_revoke": summary(in_target),
            "revoke_to_recorded": summary(recorded),
        },
        "poller": {
            "sampled": len(poller.accounts),
            "seen_gone": len(observed),
            "missing_at_start": len(poller.missing_at_start),
            "never_gone": len(poller.accounts) - len(poller.gone_at),
            "max_observed_lag_ms": round(max(observed.values()), 2) if observed else None,
            "p50_observed_lag_ms": summary(list(observed.values()))["p50"],
            "gone_later_than_reported": len(beyond),
            "interval_ms": poll_interval * 1000,
        },
        # Per grant, for the chart: seconds from the first end to its end, and its lag.
        "lags": [
            [round((g.ends_at - first_end).total_seconds(), 3), round(lag, 1)]
            for g, lag in zip([g for g in ended if g.ended_at is not None], lags, strict=True)
        ]
        if first_end is not None
        else [],
    }
    progress(
        f"{NAME} [{label}]: lag p50 {stats['p50']:.0f} ms, p99 {stats['p99']:.0f} ms, "
        f"max {stats['max']:.0f} ms over {len(lags)} grants; poller saw {len(observed)} of "
        f"{len(poller.accounts)} sampled accounts go, max {result['poller']['max_observed_lag_ms']}"
        " ms after their end"
    )
    return result
