"""The SQL unit of work and engine set-up for SQLite (default) and PostgreSQL.

SQLite: WAL journal, and every write transaction starts with BEGIN IMMEDIATE so writers queue
instead of failing. PostgreSQL: rows are locked with SELECT ... FOR UPDATE, and a commit that
made something due sooner sends NOTIFY so every worker re-plans its sleep.

Read-only units of work run outside transactions (PostgreSQL autocommit; SQLite without
BEGIN): each statement sees what was committed when it started, as READ COMMITTED did, without
the BEGIN and ROLLBACK round trips. A reader that needs one snapshot across several statements
asks for it: `readonly(snapshot=True)`. A reader never writes: its statements are checked
before they are sent (`ReadOnlyViolation`).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

from psycopg import ServerCursor
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.exc import OperationalError

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
from jitaccess.adapters.db.write_buffer import INFO_KEY, WriteBuffer, install
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
IDLE = TransactionStatus.IDLE


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
            options = conn.get_execution_options()
            if options.get("jit_reader"):
                # Without BEGIN each statement is a read of its own, like PostgreSQL's
                # autocommit; a snapshot reader holds one read transaction.
                if options.get("jit_snapshot"):
                    conn.exec_driver_sql("BEGIN DEFERRED")
                return
            mode = "DEFERRED" if options.get("jit_readonly") else "IMMEDIATE"
            conn.exec_driver_sql(f"BEGIN {mode}")

    else:
        # No pre-ping: it costs a round trip per unit of work. A connection found dead raises
        # once (503 / a worker retry) and SQLAlchemy then invalidates the whole pool.
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    event.listen(engine, "before_cursor_execute", _guard_reader)
    install(engine)
    return engine


class ReadOnlyViolation(RuntimeError):
    """A read-only unit of work was asked to write: a bug, refused before it reaches the
    database (in autocommit, the write would be committed at once, alone)."""


# What a reader may send: queries, and the BEGIN of a snapshot. Writes through the
# repositories are INSERT/UPDATE/DELETE statements, caught by their compiled kind as well.
_READ_SQL = re.compile(r"\s*(SELECT|WITH|SHOW|BEGIN)\b", re.IGNORECASE)


def _guard_reader(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: DefaultExecutionContext | None,
    executemany: bool,
) -> None:
    if not conn.get_execution_options().get("jit_reader"):
        return
    if (
        context is not None and (context.isinsert or context.isupdate or context.isdelete)
    ) or not _READ_SQL.match(statement):
        raise ReadOnlyViolation(f"a read-only unit of work cannot run: {statement[:60]}")
    if isinstance(cursor, ServerCursor) and _autocommit_idle(cursor.connection):
        # PostgreSQL declares a server-side cursor only inside a transaction: a streamed
        # query in an autocommit reader gets one, read-only, ended when the reader closes.
        cursor.connection.execute("BEGIN READ ONLY")


def _autocommit_idle(connection: Any) -> bool:
    return bool(connection.autocommit) and connection.info.transaction_status == IDLE


# Readers run outside transactions: each statement sees what was committed when it started
# (as READ COMMITTED did), with no BEGIN and ROLLBACK round trips. A snapshot reader holds one
# read-only transaction.
_READER = {"jit_reader": True}
_PG_READER = {**_READER, "isolation_level": "AUTOCOMMIT"}
_PG_SNAPSHOT = {
    **_READER,
    "jit_snapshot": True,
    "isolation_level": "REPEATABLE READ",
    "postgresql_readonly": True,
}
_SQLITE_SNAPSHOT = {**_READER, "jit_snapshot": True}


class SqlUnitOfWork:
    """One transaction (see `ports.UnitOfWork`), or with `readonly` a reader that changes
    nothing: its statements cannot write, and `commit()` only records the audit entries
    appended to it (a refused attempt, see `services.context.refuse`), in a write transaction
    of their own."""

    def __init__(
        self,
        engine: Engine,
        *,
        on_wake: Callable[[datetime | None], None] | None,
        readonly: bool = False,
        snapshot: bool = False,
    ) -> None:
        self.engine = engine
        self.on_wake = on_wake
        self.readonly = readonly
        self.snapshot = snapshot
        self.is_postgres = engine.dialect.name == "postgresql"
        self._wake = False
        self._wake_due: datetime | None = None

    def __enter__(self) -> SqlUnitOfWork:
        try:
            self.conn = self.engine.connect()
            if self.readonly:
                self.conn = self.conn.execution_options(**self._reader_options())
        except OperationalError as error:
            # The driver's message can name host and user: keep it for the log, not the caller.
            log.warning("database unreachable: %s", error.orig)
            raise Unavailable("the database cannot be reached") from None
        # A writer holds its hot inserts and updates until its next statement or its commit.
        self.writes = None if self.readonly else WriteBuffer(self.conn)
        if self.writes is not None:
            self.conn.info[INFO_KEY] = self.writes
        self.requests = SqlRequests(self.conn, self.writes)
        self.grants = SqlGrants(self.conn, self.writes)
        self.audit = SqlAudit(self.conn)
        self.policies = SqlPolicies(self.conn)
        self.tokens = SqlTokens(self.conn)
        self.mfa = SqlMfa(self.conn)
        self.reviews = SqlReviews(self.conn)
        self.notifications = SqlNotifications(self.conn, self.writes)
        self.drift = SqlDrift(self.conn)
        self.ops = SqlOps(self.conn)
        return self

    def _reader_options(self) -> dict[str, Any]:
        if self.is_postgres:
            return _PG_SNAPSHOT if self.snapshot else _PG_READER
        return _SQLITE_SNAPSHOT if self.snapshot else _READER

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.writes is not None:
                self.writes.clear()
                if not self.conn.invalidated:
                    self.conn.info.pop(INFO_KEY, None)
            if self.conn.in_transaction():
                self.conn.rollback()
        finally:
            self.conn.close()

    def commit(self) -> None:
        if self.readonly:
            self._record_audit_entries()
            return
        # NOTIFY is transactional: workers hear it only if this commit succeeds.
        notify = (NOTIFY_CHANNEL, notify_payload(self._wake_due)) if self._wake else None
        try:
            if self.is_postgres:
                # The held writes, the audit records, NOTIFY and COMMIT: one round trip.
                self.audit.commit_postgres(self.writes, notify)
            else:
                self.audit.flush(self.writes)
        except AuditWriteFailed:
            self.conn.rollback()
            raise
        # On PostgreSQL the transaction is committed already: this ends SQLAlchemy's own
        # bookkeeping of it without a round trip.
        self.conn.commit()
        if self._wake and self.on_wake is not None:
            self.on_wake(self._wake_due)
        self._wake, self._wake_due = False, None

    def _record_audit_entries(self) -> None:
        pending, self.audit.pending = self.audit.pending, []
        if pending:
            with SqlUnitOfWork(self.engine, on_wake=None) as writer:
                writer.audit.pending.extend(pending)
                writer.commit()

    def lock_role(self, role: str) -> None:
        # SQLite's BEGIN IMMEDIATE already serialises every writer.
        if self.is_postgres:
            self.conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"role:{role}"}
            )

    def rollback(self) -> None:
        self.audit.pending.clear()
        if self.writes is not None:
            self.writes.clear()
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

    def readonly(self, *, snapshot: bool = False) -> SqlUnitOfWork:
        """A unit of work that changes nothing. Each statement sees what was committed when
        it started; with `snapshot`, all see one snapshot (a read-only REPEATABLE READ
        transaction on PostgreSQL, a deferred transaction on SQLite)."""
        return SqlUnitOfWork(self.engine, on_wake=None, readonly=True, snapshot=snapshot)
