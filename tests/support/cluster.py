"""A jitaccess deployment for the replica and fault tests: several `serve` and `worker` processes
on one PostgreSQL database that can be SIGKILLed and started again, a postgres target, an HTTP
caller per person, and private PostgreSQL clusters that can be stopped and started (pg_ctl)."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from cryptography.fernet import Fernet
from psycopg import sql

from jitaccess.adapters.connectors.postgres import ROLE_PREFIX
from jitaccess.adapters.db.unit_of_work import NOTIFY_CHANNEL, libpq_dsn_to_url
from jitaccess.bootstrap import build
from jitaccess.services.manage_tokens import create_token
from jitaccess.settings import Settings
from support.postgres import ADMIN_DSN, _pg_bin, private_cluster, require_postgres, with_database
from support.processes import CLI, base_env, cli, free_port, wait_for

ENDED = frozenset({"expired", "revoked", "deactivated"})
END_ACTIONS = frozenset({f"grant.{state}" for state in ENDED})
HTTP_TIMEOUT = 15.0


# --- PostgreSQL clusters that can go away ---------------------------------------------------------


@dataclass
class StoppableCluster:
    """A private cluster (password auth) the test can stop and start again on the same port."""

    dsn: str
    data: Path
    running: bool = True

    def _pg_ctl(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if _as_root() else []
        result = subprocess.run(
            [*prefix, str(_pg_bin() / "pg_ctl"), "-D", str(self.data), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(f"pg_ctl {args[-1]} failed: {result.stdout}{result.stderr}")

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session (as an orderly shutdown does); `immediate` is a crash."""
        self._pg_ctl("-m", mode, "-w", "stop")
        self.running = False

    def start(self) -> None:
        self._pg_ctl("-l", str(self.data.parent / "log"), "-w", "-t", "30", "start")
        self.running = True


def _as_root() -> bool:
    return os.geteuid() == 0


@contextmanager
def stoppable_cluster() -> Iterator[StoppableCluster]:
    """A private cluster whose start options live in postgresql.auto.conf, so a plain
    `pg_ctl start` after a stop brings it back on the same port and socket directory."""
    with private_cluster() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            found: dict[str, str] = {}
            for name in ("data_directory", "port", "unix_socket_directories", "listen_addresses"):
                row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                assert row is not None
                found[name] = str(row[0])
            for name in ("port", "unix_socket_directories", "listen_addresses"):
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(found[name])
                    )
                )
            conn.execute("ALTER SYSTEM SET fsync = off")
        cluster = StoppableCluster(dsn, Path(found["data_directory"]))
        try:
            yield cluster
        finally:
            if not cluster.running:  # private_cluster's own stop needs it running
                cluster.start()


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new database on the shared server, copied from template0: unlike template1 (the
    default), nobody can be connected to it, and CREATE DATABASE fails while anyone is (a
    postgres target on the shared server connects to every database when it revokes)."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield with_database(ADMIN_DSN, name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def jit_roles(target_dsn: str) -> list[str]:
    """The `jit_` roles in a target: what a connector made there and has not dropped."""
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE left(rolname, length(%s)) = %s ORDER BY 1",
            [ROLE_PREFIX, ROLE_PREFIX],
        ).fetchall()
    return [str(r[0]) for r in rows]


def create_group_roles(target_dsn: str, *names: str) -> None:
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))


# --- jitaccess processes --------------------------------------------------------------------------


class JitProcess:
    """One `jitaccess serve` (API, with or without its worker) or `jitaccess worker` process."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.args = args
        # Its sessions carry its name, so a test can find them in pg_stat_activity.
        url = env["JITACCESS_DATABASE_URL"]
        separator = "&" if "?" in url else "?"
        self.env = env | {"JITACCESS_DATABASE_URL": f"{url}{separator}application_name={name}"}
        self.log = log
        self.port = free_port() if args[0] == "serve" else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def serves_api(self) -> bool:
        return self.port is not None

    @property
    def runs_worker(self) -> bool:
        return self.args[0] == "worker" or "--no-worker" not in self.args

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.name} serves no API"
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        args = [*self.args, "--port", str(self.port)] if self.port is not None else self.args
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [CLI, *args], env=self.env, stdout=handle, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ready(self) -> bool:
        if not self.alive:
            raise AssertionError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
        if not self.serves_api:
            return True
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, nothing finished, claims left to their leases."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass(frozen=True)
class Caller:
    """One person talking to one server over HTTP (plain httpx: no CLI start-up per call)."""

    url: str
    token: str

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(
            self.url + path, headers=self._headers(), params=params, timeout=HTTP_TIMEOUT
        )

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> httpx.Response:
        return httpx.post(
            self.url + path, headers=self._headers(), json=dict(body or {}), timeout=HTTP_TIMEOUT
        )

    def ok(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = self.get(path) if method == "GET" else self.post(path, body)
        assert response.status_code in (200, 201), f"{method} {path}: {response.text}"
        return response.json()

    def audit(self) -> list[dict[str, Any]]:
        """Every audit record, in sequence order (needs an admin's or auditor's token)."""
        records: list[dict[str, Any]] = []
        while True:
            after = records[-1]["seq"] if records else 0
            page = self.ok("GET", f"/api/v1/audit?after={after}&limit=5000")["items"]
            records.extend(page)
            if len(page) < 5000:
                return records

    def verify(self) -> dict[str, Any]:
        verification: dict[str, Any] = self.ok("GET", "/api/v1/audit/verify")
        return verification


@dataclass
class Deployment:
    """jitaccess on one PostgreSQL database, with a postgres target; its processes and people."""

    root: Path
    env: dict[str, str]
    database_dsn: str
    target_dsn: str
    tokens: dict[str, str]
    processes: list[JitProcess] = field(default_factory=list)

    def add(self, name: str, *args: str) -> JitProcess:
        process = JitProcess(name, list(args), self.env, self.root / f"{name}.log")
        self.processes.append(process)
        return process

    def start(self, *processes: JitProcess) -> None:
        """Start them together and wait until each serves and each worker listens."""
        for process in processes:
            process.start()
        wait_for(
            lambda: all(p.ready() for p in processes), 60, f"{[p.name for p in processes]} ready"
        )
        self.wait_for_listeners()

    def kill(self, *processes: JitProcess) -> None:
        for process in processes:
            process.kill()
        self.wait_for_listeners()

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()

    def wait_for_listeners(self, timeout: float = 30) -> None:
        """Each live worker LISTENs on its own connection: count them to know it is up (and
        a killed one's session to be gone)."""
        expected = sum(1 for p in self.processes if p.alive and p.runs_worker)
        wait_for(lambda: self.listeners() == expected, timeout, f"{expected} listening worker(s)")

    def listeners(self) -> int:
        with psycopg.connect(self.database_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query = %s",
                [f"LISTEN {NOTIFY_CHANNEL}"],
            ).fetchone()
        return int(row[0]) if row else 0

    def caller(self, who: str, process: JitProcess) -> Caller:
        return Caller(process.url, self.tokens[who])

    def grants(self) -> dict[str, GrantRow]:
        """Every grant, read from the database itself (it answers while the servers are down)."""
        with psycopg.connect(self.database_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT id, principal, state, ends_at, ended_at, attempts, flagged_at"
                " FROM grants ORDER BY created_at"
            ).fetchall()
        return {
            str(r[0]): GrantRow(
                id=str(r[0]),
                principal=str(r[1]),
                state=str(r[2]),
                ends_at=_utc(r[3]),
                ended_at=_utc(r[4]) if r[4] else None,
                attempts=int(r[5]),
                flagged_at=_utc(r[6]) if r[6] else None,
            )
            for r in rows
        }

    def count(self, table: str) -> int:
        with psycopg.connect(self.database_dsn, autocommit=True) as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            found = row.fetchone()
        return int(found[0]) if found else 0


@dataclass(frozen=True)
class GrantRow:
    id: str
    principal: str
    state: str
    ends_at: datetime
    ended_at: datetime | None
    attempts: int
    flagged_at: datetime | None


def _utc(column: datetime) -> datetime:
    # The columns are naive UTC (the schema's UTCDateTime); compare them as aware datetimes.
    return column.replace(tzinfo=UTC)


def deploy(
    root: Path,
    *,
    database_dsn: str,
    target_dsn: str = "",
    policy: str,
    people: list[str],
    **settings: str,
) -> Deployment:
    """Migrate, apply the policy, create a token per person; no process runs yet.

    Periodic jobs (health, drift repair) are off unless asked for: drift repair would remove
    an orphaned `jit_` role and hide the very leak these tests look for."""
    key = root / "secret.key"
    key.write_bytes(Fernet.generate_key())
    key.chmod(0o600)
    env = base_env(
        root,
        JITACCESS_DATABASE_URL=libpq_dsn_to_url(database_dsn),
        JITACCESS_SECRET_KEY_FILE=str(key),
        JITACCESS_HEALTH_INTERVAL_SECONDS="0",
        JITACCESS_RECONCILE_INTERVAL_SECONDS="0",
        **({"E2E_PG_ADMIN": target_dsn} if target_dsn else {}),
        **settings,
    )
    policy_file = root / "policy.yaml"
    policy_file.write_text(policy)
    cli(env, "policy", "apply", str(policy_file))  # migrates first, as every command does
    return Deployment(root, env, database_dsn, target_dsn, _tokens(env, people))


def _tokens(env: dict[str, str], people: list[str]) -> dict[str, str]:
    """One API token per person, made in-process: a CLI start-up per person costs seconds."""
    settings = Settings(
        data_dir=Path(env["JITACCESS_DATA_DIR"]),
        database_url=env["JITACCESS_DATABASE_URL"],
        secret_key_file=Path(env["JITACCESS_SECRET_KEY_FILE"]),
        run_worker=False,
    )
    container = build(settings)
    try:
        tokens = {}
        for who in people:
            with container.uow() as uow:
                _, tokens[who] = create_token(
                    uow, container.clock, principal=who, created_by="e2e test"
                )
        return tokens
    finally:
        container.close()


@contextmanager
def running(deployment: Deployment) -> Iterator[Deployment]:
    try:
        yield deployment
    finally:
        deployment.stop_all()
