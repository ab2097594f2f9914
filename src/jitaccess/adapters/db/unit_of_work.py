"""The SQL unit of work and engine set-up for SQLite (default) and PostgreSQL.

SQLite: WAL journal, and every write transaction starts with BEGIN IMMEDIATE so writers queue
instead of failing. PostgreSQL: rows are locked with SELECT ... FOR UPDATE, and a commit that
made something due sooner sends NOTIFY so every worker re-plans its sleep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from jitaccess.adapters.db.repositories import (
    SqlAudit,
    SqlGrants,
    SqlPolicies,
    SqlRequests,
    SqlTokens,
)
from jitaccess.domain.errors import AuditWriteFailed, Unavailable

NOTIFY_CHANNEL = "jitaccess_due"
log = logging.getLogger("jitaccess.db")


def normalise_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            poolclass=NullPool if ":memory:" not in url else None,
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
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800
    )


class SqlUnitOfWork:
    def __init__(
        self, engine: Engine, *, on_wake: Callable[[], None] | None, readonly: bool = False
    ) -> None:
        self.engine = engine
        self.on_wake = on_wake
        self.readonly = readonly
        self.is_postgres = engine.dialect.name == "postgresql"
        self._wake = False

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
            self.conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
        self.conn.commit()
        if self._wake and self.on_wake is not None:
            self.on_wake()
        self._wake = False

    def rollback(self) -> None:
        self.audit.pending.clear()
        self._wake = False
        self.conn.rollback()

    def wake_worker(self) -> None:
        self._wake = True


class SqlUnitOfWorkFactory:
    def __init__(self, engine: Engine, on_wake: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.on_wake = on_wake

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, on_wake=self.on_wake)

    def readonly(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, on_wake=None, readonly=True)
