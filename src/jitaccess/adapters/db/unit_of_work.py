"""The SQL unit of work and engine set-up for SQLite (default) and PostgreSQL.

SQLite: WAL journal, and every write transaction starts with BEGIN IMMEDIATE so writers queue
instead of failing. PostgreSQL: rows are locked with SELECT ... FOR UPDATE, and a commit that
made something due sooner sends NOTIFY so every worker re-plans its sleep.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError

from jitaccess.adapters.db.audit_repository import SqlAudit
from jitaccess.adapters.db.policy_repository import SqlPolicies
from jitaccess.adapters.db.repositories import SqlGrants, SqlRequests
from jitaccess.adapters.db.token_repository import SqlTokens
from jitaccess.adapters.db.workflow_repositories import (
    SqlDrift,
    SqlMfa,
    SqlNotifications,
    SqlOps,
    SqlReviews,
)
from jitaccess.domain.errors import AuditWriteFailed, Unavailable

NOTIFY_CHANNEL = "jitaccess_due"
# Identifies this process in its notifications, so its own listener can skip them: the
# in-process wake-up has already been rung.
PROCESS_TOKEN = uuid.uuid4().hex[:12]


def notify_payload(due: datetime | None) -> str:
    return f"{PROCESS_TOKEN}|{due.isoformat() if due else ''}"


def parse_payload(payload: str) -> tuple[str, datetime | None]:
    token, _, due = payload.partition("|")
    try:
        return token, datetime.fromisoformat(due) if due else None
    except ValueError:
        return token, None


log = logging.getLogger("jitaccess.db")


def libpq_dsn_to_url(dsn: str) -> str:
    """A libpq `key=value` DSN (as psql and psycopg print them) as a postgresql:// URL."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return dsn
    parts = conninfo_to_dict(dsn)
    auth = quote(str(parts.get("user", "postgres")), safe="")
    if parts.get("password"):
        auth += ":" + quote(str(parts["password"]), safe="")
    host, port = parts.get("host", "127.0.0.1"), parts.get("port", 5432)
    return f"postgresql://{auth}@{host}:{port}/{parts.get('dbname', 'postgres')}"


def normalise_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        # Pooled: opening a SQLite connection (and closing the last one on a WAL file) costs
        # milliseconds, several times the work of a typical unit of work.
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            mode = "DEFERRED" if conn.get_execution_options().get("jit_readonly") else "IMMEDIATE"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    # No pre-ping: it costs a round trip per unit of work. A connection found dead raises once
    # (503 / a worker retry) and SQLAlchemy then invalidates the whole pool.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


class SqlUnitOfWork:
    def __init__(
        self,
        engine: Engine,
        *,
        on_wake: Callable[[datetime | None], None] | None,
        readonly: bool = False,
    ) -> None:
        self.engine = engine
        self.on_wake = on_wake
        self.readonly = readonly
        self.is_postgres = engine.dialect.name == "postgresql"
        self._wake = False
        self._wake_due: datetime | None = None

    def __enter__(self) -> SqlUnitOfWork:
        try:
            self.conn = self.engine.connect()
            if self.readonly:
                self.conn = self.conn.execution_options(jit_readonly=True)
        except OperationalError as error:
            # The driver's message can name host and user: keep it for the log, not the caller.
            log.warning("database unreachable: %s", error.orig)
            raise Unavailable("the database cannot be reached") from None
        self.requests = SqlRequests(self.conn)
        self.grants = SqlGrants(self.conn)
        self.audit = SqlAudit(self.conn)
        self.policies = SqlPolicies(self.conn)
        self.tokens = SqlTokens(self.conn)
        self.mfa = SqlMfa(self.conn)
        self.reviews = SqlReviews(self.conn)
        self.notifications = SqlNotifications(self.conn)
        self.drift = SqlDrift(self.conn)
        self.ops = SqlOps(self.conn)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.conn.in_transaction():
                self.conn.rollback()
        finally:
            self.conn.close()

    def commit(self) -> None:
        try:
            self.audit.flush()
        except DBAPIError as error:
            self.conn.rollback()
            raise AuditWriteFailed(
                "the audit record could not be written, so the change was not made"
            ) from error
        if self._wake and self.is_postgres:
            # NOTIFY is transactional: workers hear it only if this commit succeeds.
            self.conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": NOTIFY_CHANNEL, "payload": notify_payload(self._wake_due)},
            )
        self.conn.commit()
        if self._wake and self.on_wake is not None:
            self.on_wake(self._wake_due)
        self._wake, self._wake_due = False, None

    def lock_role(self, role: str) -> None:
        # SQLite's BEGIN IMMEDIATE already serialises every writer.
        if self.is_postgres:
            self.conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"role:{role}"}
            )

    def rollback(self) -> None:
        self.audit.pending.clear()
        self._wake, self._wake_due = False, None
        self.conn.rollback()

    def wake_worker(self, due: datetime | None = None) -> None:
        # The earliest wins; "now" (None) beats any time.
        if not self._wake:
            self._wake, self._wake_due = True, due
        elif self._wake_due is not None:
            self._wake_due = None if due is None else min(self._wake_due, due)


class SqlUnitOfWorkFactory:
    def __init__(
        self, engine: Engine, on_wake: Callable[[datetime | None], None] | None = None
    ) -> None:
        self.engine = engine
        self.on_wake = on_wake

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, on_wake=self.on_wake)

    def readonly(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, on_wake=None, readonly=True)
