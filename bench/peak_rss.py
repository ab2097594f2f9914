"""Peak RSS of one `jitaccess serve` process (API + worker) whose PostgreSQL database holds 100,000
active grants and a policy with a large number of eligibility rows; and how long it takes to
load that policy. RSS is sampled from outside with psutil every 20 ms over the process's life.

The policy is generated as the stored JSON document (bench/policy_document.py) and stored as
a new version; the grants are written in bulk (bench/bulk.py). For each policy size:
start the process; wait until /healthz answers; wait until its worker has provisioned a
sentinel grant (it has then loaded the policy and made a pass); make one request through the
API (POST /api/v1/requests), wait for its grant, send 50 GET /api/v1/check; stop it.

The default run measures two smaller sizes and extrapolates linearly (memory and time both
grow with the rows; the two points give the slope); `--only peak_rss_full` measures the real
1,000,000 rows (about a minute here, most of it writing the grants and the policy). A fresh
process then replays the load step by step, and under tracemalloc (bench/policy_memory.py),
to say where the memory and time go.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the dev extras (types-psutil)
from sqlalchemy import select

from bench import policy_document
from bench.bulk import ActiveGrant, insert_activating_grant, insert_active_grants
from bench.check_api import ROOT, start_server
from bench.setup import Stack, jitaccess_stack, process_env, progress, run_id
from jitaccess.adapters.db.tables import grants
from jitaccess.bootstrap import Container
from jitaccess.ports import PolicyVersion
from jitaccess.services.manage_tokens import create_token

NAME = "peak_rss"
FULL_SCALE_NAME = "peak_rss_full"
TARGET_MB = 500.0
TARGET_ROWS = 1_000_000
MB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    grants: int
    users: tuple[int, ...]  # one process per size; eligibility rows = users x roles
    roles: int = 10
    trace_users: int = 1_000  # the tracemalloc replay (slow under tracing)
    ready_within: float = 900.0  # seconds the process may take to load the policy


# users=0: the baseline, the same process with the 12-row frame policy (no generated rows).
FULL = Plan(grants=100_000, users=(0, 2_000, 10_000))  # 20k and 100k eligibility rows
QUICK = Plan(grants=10_000, users=(0, 300, 1_500), trace_users=300)
FULL_SCALE = Plan(grants=100_000, users=(0, 100_000), trace_users=2_000, ready_within=1800.0)


def run(quick: bool = False) -> list[dict[str, Any]]:
    return [measure(QUICK if quick else FULL, NAME)]


def run_full_scale(quick: bool = False) -> list[dict[str, Any]]:
    return [measure(FULL_SCALE, FULL_SCALE_NAME)]


# --- watching the process ----------------------------------------------------------------------


@dataclass
class RssSampler:
    """RSS of one process every `interval` seconds, from outside."""

    pid: int
    interval: float = 0.02
    peak: int = 0
    series: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def now(self) -> int:
        return self.series[-1][1] if self.series else 0

    def _run(self) -> None:
        process = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                rss = int(process.memory_info().rss)
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.series.append((time.monotonic() - self._started, rss))
            self._stop.wait(self.interval)


@contextmanager
def sampled(process: subprocess.Popen[bytes]) -> Iterator[RssSampler]:
    sampler = RssSampler(process.pid)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


# --- the benchmark -----------------------------------------------------------------------------


def measure(plan: Plan, name: str) -> dict[str, Any]:
    run = run_id()
    label = f"{plan.grants // 1000}k active grants"
    progress(f"{name}: {plan.grants} active grants; policies of {plan.users} users x "
             f"{plan.roles} roles (run {run})")  # fmt: skip
    with ExitStack() as stack:
        frame = _frame_yaml(plan.roles)
        bench = stack.enter_context(jitaccess_stack("postgres", frame))
        container = bench.container
        with container.uow.readonly() as uow:
            frame_version = uow.policies.current()
        assert frame_version is not None
        biggest = max(plan.users)
        now = datetime.now(UTC)
        wanted = [
            ActiveGrant(
                policy_document.user_name(i % biggest),
                now - timedelta(minutes=5),
                now + timedelta(hours=2, seconds=i % 3600),
            )
            for i in range(plan.grants)
        ]
        insert_active_grants(container, policy_document.role_name(0), wanted, name)
        with container.uow() as uow:
            _, token = create_token(
                uow, container.clock, principal=policy_document.SENTINEL, created_by="bench"
            )
        points = [_one_size(bench, frame_version, users, plan, token, name) for users in plan.users]
    trace = _replay(plan.trace_users, plan.roles, trace=True, name=name)
    timing = _replay(min(10_000, *(u for u in plan.users if u)), plan.roles, trace=False, name=name)
    return _report(plan, points, trace, timing, name, label)


def _frame_yaml(roles: int) -> str:
    return (
        "admins: [group:security]\nusers:\n  security-admin: {groups: [security]}\n"
        f"  {policy_document.SENTINEL}: {{groups: [sentinel]}}\n"
        "targets:\n  bench: {type: fake}\nroles:\n"
        + "".join(
            f"  {policy_document.role_name(r)}:\n    target: bench\n    grants: {{scope: read}}\n"
            "    duration: {default: 1h, min: 1s, max: 8h}\n"
            for r in range(roles)
        )
        + "eligibility:\n  - principals: [group:sentinel]\n"
        f"    roles: [{policy_document.role_name(0)}]\n"
    )


def _one_size(
    bench: Stack, frame: PolicyVersion, users: int, plan: Plan, token: str, name: str
) -> dict[str, Any]:
    container = bench.container
    rows = users * plan.roles + len(frame.policy.eligibility)  # + the sentinel's row
    if users:
        started = time.perf_counter()
        document = policy_document.generate(users, plan.roles)
        generated = time.perf_counter() - started
        started = time.perf_counter()
        version = policy_document.store(container.engine, document)
        stored = time.perf_counter() - started
        stored_mb = len(json.dumps(document)) / MB
        del document
        progress(
            f"{name}: policy v{version} with {rows} eligibility rows ({stored_mb:.0f} MB of "
            f"JSON) generated in {generated:.1f}s, stored in {stored:.1f}s"
        )
    else:
        stored_mb = len(json.dumps(dict(frame.document))) / MB
        progress(f"{name}: baseline: the frame policy alone ({rows} eligibility row)")
    role = policy_document.role_name(0)
    sentinel = insert_activating_grant(container, frame, policy_document.SENTINEL, role)
    # The fake target of this process starts empty: drift repair would re-provision every
    # grant. Every other setting is the default (the health job runs at start).
    env = process_env(container, JITACCESS_RECONCILE_INTERVAL_SECONDS="0")
    command = [sys.executable, "-m", "jitaccess.entrypoints.cli", "serve"]
    launched = time.monotonic()
    point: dict[str, Any] = {"users": users, "eligibility_rows": rows, "policy_json_mb": stored_mb}
    with start_server(command, env) as (process, base), sampled(process) as rss:
        point["up_s"] = round(time.monotonic() - launched, 2)
        point["ready_s"] = _wait_active(container, sentinel, launched, plan.ready_within, name)
        point["rss_at_ready_mb"] = round(rss.now() / MB, 1)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
            started = time.perf_counter()
            made = http.post(
                "/api/v1/requests",
                json={"roles": [role], "duration": "10m", "justification": "peak RSS bench"},
            )
            point["first_request_ms"] = round((time.perf_counter() - started) * 1000, 1)
            point["first_request_status"] = made.status_code
            if made.status_code == 201:
                grant_ids = made.json().get("grant_ids", [])
                if grant_ids:
                    _wait_active(container, grant_ids[0], time.monotonic(), 60, name)
            statuses = [
                http.get("/api/v1/check", params={"role": role}).status_code for _ in range(50)
            ]
            point["check_ok"] = statuses.count(200)
        time.sleep(1.0)
        point["rss_end_mb"] = round(rss.now() / MB, 1)
        point["peak_rss_mb"] = round(rss.peak / MB, 1)
        point["rss_series"] = _downsample(rss.series)
        point["cpu_s"] = round(sum(psutil.Process(process.pid).cpu_times()[:2]), 1)
    progress(
        f"{name}: {rows} rows: up {point['up_s']}s, policy loaded and first pass "
        f"{point['ready_s']}s after start; peak RSS {point['peak_rss_mb']:.0f} MB, "
        f"{point['rss_end_mb']:.0f} MB at the end; POST /requests {point['first_request_ms']} ms"
    )
    return point


def _wait_active(
    container: Container, grant_id: str, since: float, limit: float, name: str
) -> float | None:
    last_print = time.monotonic()
    while time.monotonic() - since < limit:
        with container.engine.connect() as conn:
            state = conn.execute(select(grants.c.state).where(grants.c.id == grant_id)).scalar()
        if state == "active":
            return round(time.monotonic() - since, 2)
        if time.monotonic() - last_print >= 15:
            progress(f"{name}: waiting for the policy to load ({time.monotonic() - since:.0f}s)")
            last_print = time.monotonic()
        time.sleep(0.1)
    return None


def _downsample(series: list[tuple[float, int]], step: float = 0.5) -> list[list[float]]:
    out: list[list[float]] = []
    for at, rss in series:
        if not out or at - out[-1][0] >= step:
            out.append([round(at, 2), round(rss / MB, 1)])
    return out


def _replay(users: int, roles: int, *, trace: bool, name: str) -> dict[str, Any]:
    what = "under tracemalloc" if trace else "timed"
    progress(f"{name}: replaying the load of {users * roles} rows in a fresh process ({what})")
    command = [sys.executable, "-m", "bench.policy_memory", "--users", str(users)]
    command += ["--roles", str(roles), *(["--trace"] if trace else [])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    replay: dict[str, Any] = json.loads(done.stdout)
    return replay


def _fit(points: list[dict[str, Any]], key: str, at: int) -> float | None:
    """Linear through the two largest sizes, evaluated at `at` rows (the measured figure if
    the largest size is `at`)."""
    usable = [p for p in points if p.get(key) is not None]
    if not usable:
        return None
    if usable[-1]["eligibility_rows"] >= at or len(usable) == 1:
        return float(usable[-1][key]) if usable[-1]["eligibility_rows"] >= at else None
    a, b = usable[-2], usable[-1]
    slope = (b[key] - a[key]) / (b["eligibility_rows"] - a["eligibility_rows"])
    return round(float(a[key] + slope * (at - a["eligibility_rows"])), 1)


def _report(
    plan: Plan,
    points: list[dict[str, Any]],
    trace: dict[str, Any],
    timing: dict[str, Any],
    name: str,
    label: str,
) -> dict[str, Any]:
    largest = points[-1]
    measured_at_target = largest["eligibility_rows"] >= TARGET_ROWS
    peak = _fit(points, "peak_rss_mb", TARGET_ROWS)
    ready = _fit(points, "ready_s", TARGET_ROWS)
    result = {
        "benchmark": name,
        "variant": f"{label}, {largest['eligibility_rows']:,} eligibility rows"
        + ("" if measured_at_target else f" (extrapolated to {TARGET_ROWS:,})"),
        "grants": plan.grants,
        "points": points,
        "extrapolated": not measured_at_target,
        "peak_rss_mb_at_1m": peak,
        "ready_s_at_1m": ready,
        "tracemalloc": trace,
        "timing": timing,
        "target": f"peak RSS <= {TARGET_MB:.0f} MB at {TARGET_ROWS:,} rows",
        "met": peak is not None and peak <= TARGET_MB,
    }
    progress(
        f"{name}: peak RSS at {TARGET_ROWS:,} rows "
        f"{'measured' if measured_at_target else 'extrapolated'}: {peak} MB; policy loaded "
        f"{ready}s after start"
    )
    return result
