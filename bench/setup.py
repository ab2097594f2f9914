"""What the benchmarks share: scratch PostgreSQL databases, a jitaccess container on SQLite or
PostgreSQL, a target database with a group role, timing hooks, and percentile arithmetic.

The hooks (a unit of work that signals each commit, connectors that time each call) are
injected where bootstrap wires the container, so the code under test runs unpatched.
"""

from __future__ import annotations

import builtins
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import Engine, text

from jitaccess.adapters.connectors.registry import ConnectorRegistry
from jitaccess.adapters.db.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory, libpq_dsn_to_url
from jitaccess.bootstrap import Container, apply_policy_files, build, upgrade
from jitaccess.domain.policy import Target
from jitaccess.entrypoints.worker import Worker
from jitaccess.ports import Access, Connector, ExistingAccess
from jitaccess.services.run_due_work import WorkReport
from jitaccess.settings import Settings

ADMIN_DSN = os.environ.get(
    "JITACCESS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
#: The policy's postgres target reads its admin connection string from this variable.
TARGET_ENV = "JITACCESS_BENCH_TARGET_URL"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_id() -> str:
    """A short prefix that makes this run's principals, roles and databases unmistakable."""
    return f"b{uuid.uuid4().hex[:6]}"


# --- PostgreSQL scratch space ------------------------------------------------------------------


def server_version(dsn: str = ADMIN_DSN) -> str:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


@contextmanager
def scratch_database(prefix: str, admin_dsn: str = ADMIN_DSN) -> Iterator[str]:
    """A new, uniquely named database; dropped (sessions and all) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass(frozen=True)
class TargetDatabase:
    """A scratch database the postgres connector grants into, and the group role it grants."""

    dsn: str
    group_role: str

    @property
    def url(self) -> str:
        return libpq_dsn_to_url(self.dsn)


@contextmanager
def target_database(run: str) -> Iterator[TargetDatabase]:
    """A scratch target with a NOLOGIN group role; afterwards every role of this run is dropped:
    the login roles the connector made for principals named `<run>…` and the group role."""
    group_role = f"bench_readers_{run}"
    with scratch_database("jit_bench_target") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group_role)))
        try:
            yield TargetDatabase(dsn, group_role)
        finally:
            dropped = drop_roles_of_run(dsn, run, group_role)
            progress(f"cleanup: dropped {dropped} role(s) of run {run}")


def drop_roles_of_run(dsn: str, run: str, group_role: str) -> int:
    pattern = f"jit\\_{run}%"
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [pattern]
            ).fetchall()
        ]
        for name in [*names, group_role]:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    return len(names) + 1


# --- jitaccess ---------------------------------------------------------------------------------


class CommitSignal:
    """Wakes whoever waits for 'something was committed'; a generation counter avoids races."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.generation = 0

    def fire(self) -> None:
        with self._condition:
            self.generation += 1
            self._condition.notify_all()

    def wait_past(self, generation: int, timeout: float) -> int:
        with self._condition:
            self._condition.wait_for(lambda: self.generation != generation, timeout)
            return self.generation


class SignallingUnitOfWork(SqlUnitOfWork):
    def __init__(
        self, engine: Engine, *, on_wake: Any, signal: CommitSignal, readonly: bool = False
    ) -> None:
        super().__init__(engine, on_wake=on_wake, readonly=readonly)
        self._signal = signal

    def commit(self) -> None:
        super().commit()
        self._signal.fire()


class SignallingUnitOfWorkFactory(SqlUnitOfWorkFactory):
    """The container's unit of work, plus a signal after every commit (worker's included)."""

    def __init__(self, base: SqlUnitOfWorkFactory, signal: CommitSignal) -> None:
        super().__init__(base.engine, on_wake=base.on_wake)
        self.signal = signal

    def __call__(self) -> SqlUnitOfWork:
        return SignallingUnitOfWork(self.engine, on_wake=self.on_wake, signal=self.signal)


@dataclass(frozen=True)
class Call:
    operation: str
    grant_id: str
    started: float  # time.time(), comparable with the database's UTC timestamps
    finished: float


@dataclass
class CallLog:
    calls: builtins.list[Call] = field(default_factory=list)

    def of(self, operation: str) -> dict[str, Call]:
        return {c.grant_id: c for c in list(self.calls) if c.operation == operation}


class TimedConnector:
    """A connector that records when each provision and revoke started and finished."""

    def __init__(self, inner: Connector, log: CallLog) -> None:
        self.inner = inner
        self.log = log
        self.per_grant_account = inner.per_grant_account

    def provision(self, access: Access) -> Mapping[str, str] | None:
        started = time.time()
        result = self.inner.provision(access)
        self.log.calls.append(Call("provision", access.grant_id, started, time.time()))
        return result

    def revoke(self, access: Access) -> None:
        started = time.time()
        self.inner.revoke(access)
        self.log.calls.append(Call("revoke", access.grant_id, started, time.time()))

    def extend(self, access: Access) -> None:
        self.inner.extend(access)

    def list_access(
        self, governed: Sequence[Mapping[str, Any]] = ()
    ) -> builtins.list[ExistingAccess]:
        return self.inner.list_access(governed)

    def remove(self, existing: ExistingAccess) -> None:
        self.inner.remove(existing)

    def account_of(self, access: Access) -> str:
        return self.inner.account_of(access)

    def check(self) -> None:
        self.inner.check()


class TimedConnectors(ConnectorRegistry):
    """The container's connector registry, each connector wrapped in a `TimedConnector`."""

    def __init__(self) -> None:
        super().__init__()
        self.log = CallLog()

    def for_target(self, definition: Target) -> Connector:
        return TimedConnector(super().for_target(definition), self.log)

    def inner(self, definition: Target) -> Connector:
        return super().for_target(definition)


@dataclass(frozen=True)
class Pass:
    started: float  # time.time()
    seconds: float
    claimed: int
    ended: int
    provisioned: int


class TimedWorker(Worker):
    """The real worker; each pass (`run_once`) and each planning query (`seconds_until_due`)
    is timed, so a slow pass shows up with its time and size."""

    def __init__(self, container: Container) -> None:
        super().__init__(container)
        self.timed_passes: builtins.list[Pass] = []
        self.planning: builtins.list[float] = []

    def run_once(self) -> WorkReport:
        started, began = time.time(), time.perf_counter()
        report = super().run_once()
        self.timed_passes.append(
            Pass(
                started,
                time.perf_counter() - began,
                report.claimed,
                report.ended,
                report.provisioned,
            )
        )
        return report

    def seconds_until_due(self) -> float:
        began = time.perf_counter()
        try:
            return super().seconds_until_due()
        finally:
            self.planning.append(time.perf_counter() - began)

    def summary(self, since: float = 0.0) -> dict[str, Any]:
        """Passes that started after `since` (time.time()): their durations in ms, the slowest."""
        passes = [p for p in self.timed_passes if p.started >= since]
        slowest = max(passes, key=lambda p: p.seconds, default=None)
        return {
            "passes": len(passes),
            "pass_ms": summary([p.seconds * 1000 for p in passes]),
            "slowest_pass": None
            if slowest is None
            else {
                "at": slowest.started,
                "ms": round(slowest.seconds * 1000, 1),
                "claimed": slowest.claimed,
                "ended": slowest.ended,
            },
            "planning_query_ms": summary([s * 1000 for s in self.planning]),
        }


@dataclass
class Stack:
    container: Container
    signal: CommitSignal
    connectors: TimedConnectors
    store: str  # "sqlite" or "postgres"


@contextmanager
def jitaccess_stack(store: str, policy: str) -> Iterator[Stack]:
    """A migrated jitaccess database (SQLite in a temp dir or a scratch PostgreSQL database)
    with `policy` applied, and a container whose uow and connectors carry the bench hooks."""
    with tempfile.TemporaryDirectory(prefix="jit_bench_") as tmp:
        workdir = Path(tmp)
        with _database_url(store, workdir) as url:
            container = build(Settings(data_dir=workdir, database_url=url, run_worker=False))
            signal = CommitSignal()
            connectors = TimedConnectors()
            container.uow = SignallingUnitOfWorkFactory(container.uow, signal)
            container.connectors = connectors
            try:
                upgrade(container)
                policy_file = workdir / "policy.yaml"
                policy_file.write_text(policy)
                apply_policy_files(container, [str(policy_file)], actor="bench")
                yield Stack(container, signal, connectors, store)
            finally:
                container.close()


@contextmanager
def _database_url(store: str, workdir: Path) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{workdir / 'jitaccess.db'}"
        return
    with scratch_database("jit_bench_store") as dsn:
        yield libpq_dsn_to_url(dsn)


def process_env(container: Container, **settings: str) -> dict[str, str]:
    """The environment of a jitaccess process the bench starts on `container`'s database and
    data directory (so the same secret key), logging warnings only, plus `settings`
    (`JITACCESS_*` names)."""
    return {
        **os.environ,
        "JITACCESS_DATABASE_URL": container.settings.resolved_database_url,
        "JITACCESS_DATA_DIR": str(container.settings.data_dir),
        "JITACCESS_LOG_LEVEL": "warning",
        **settings,
    }


def grant_states(container: Container) -> dict[str, int]:
    with container.engine.connect() as conn:
        rows = conn.execute(text("SELECT state, count(*) FROM grants GROUP BY state")).all()
    return {str(state): int(count) for state, count in rows}


# --- what the database and the machine waited on --------------------------------------------


class WaitSampler:
    """Samples, every `interval`, what the PostgreSQL backends of one database are doing
    (pg_stat_activity: waiting on the client, on a lock, on WAL fsync …), and how much of the
    machine's CPU time went to I/O wait meanwhile: the evidence for a stall."""

    def __init__(self, database: str, interval: float = 0.05) -> None:
        self.database = database
        self.interval = interval
        self.counts: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-waits", daemon=True)

    def start(self) -> None:
        self._cpu_before = _cpu_ticks()
        self._wal_before = _wal()
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        wal = {k: v - self._wal_before.get(k, 0) for k, v in _wal().items()}
        after = _cpu_ticks()
        total = sum(after) - sum(self._cpu_before)
        iowait = after[4] - self._cpu_before[4]
        top = sorted(self.counts.items(), key=lambda item: -item[1])[:6]
        return {
            "samples": self.samples,
            "busy_backends_by_wait": {k: round(v / max(1, self.samples), 3) for k, v in top},
            "machine_iowait_share": round(iowait / total, 3) if total else None,
            # Server-wide (pg_stat_wal): WAL written meanwhile, and how many full-page images,
            # which the first change of each page after a checkpoint writes.
            "wal": wal,
        }

    def _run(self) -> None:
        query = (
            "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity "
            "WHERE datname = %s AND state = 'active' AND pid <> pg_backend_pid()"
        )
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            while not self._stop.is_set():
                for (what,) in conn.execute(query, [self.database]).fetchall():
                    self.counts[str(what)] = self.counts.get(str(what), 0) + 1
                self.samples += 1
                self._stop.wait(self.interval)


def _wal() -> dict[str, int]:
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            row = conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
    except psycopg.Error:
        return {}
    if row is None:
        return {}
    return {"records": int(row[0]), "full_page_images": int(row[1]), "bytes": int(row[2])}


def _cpu_ticks() -> list[int]:
    """user, nice, system, idle, iowait, … of all CPUs, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0]
    return [int(v) for v in first.split()[1:]]


def database_of(container: Container) -> str | None:
    """The PostgreSQL database name of a container's store (None on SQLite)."""
    if container.engine.dialect.name != "postgresql":
        return None
    return container.engine.url.database


# --- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p99, max and mean of a series in milliseconds, rounded for reading."""
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2) if values else math.nan,
        "mean": round(sum(values) / len(values), 2) if values else math.nan,
    }


# --- the machine's other load ------------------------------------------------------------------


def _process_cpu_ticks() -> dict[int, tuple[str, int, int]]:
    """pid -> (command, parent pid, user+system clock ticks so far) for every readable process."""
    found: dict[int, tuple[str, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        command = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry.name)] = (command, int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


class ForeignLoad:
    """CPU that processes other than this one (and the servers and load generators it
    started) and the PostgreSQL server used meanwhile, in cores: a benchmark on a 2-core
    machine shared with a test suite measures the suite too. PostgreSQL's own CPU is
    reported apart (it serves this run and, possibly, the others)."""

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK")
        self._before = _process_cpu_ticks()
        self._started = time.monotonic()

    def cores(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        now = _process_cpu_ticks()
        ours = _descendants(os.getpid(), {**self._before, **now})
        busy: dict[str, float] = {}
        postgres = 0.0
        for pid, (command, _, ticks) in now.items():
            before = self._before.get(pid)
            spent = ticks - (before[2] if before and before[0] == command else 0)
            if spent <= 0 or pid in ours:
                continue
            if command.startswith("postgres"):
                postgres += spent / self._tick / elapsed
                continue
            busy[command] = busy.get(command, 0.0) + spent / self._tick / elapsed
        top = sorted(busy.items(), key=lambda item: -item[1])[:3]
        return {
            "cores": round(sum(busy.values()), 2),
            "top": {command: round(cores, 2) for command, cores in top},
            "postgres_cores": round(postgres, 2),
        }


def _descendants(root: int, processes: dict[int, tuple[str, int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
