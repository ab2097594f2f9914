"""The audit log as the verifier reads it: every record in seq order, streamed (a server-side
cursor on PostgreSQL, plain iteration on SQLite) as raw rows, `at` formatted by the database as
the chain hashes it. On a unit of work's connection, or on a connection of its own in a worker
process (`audit.range_worker`), which imports this module and no more: no SQLAlchemy, and the
PostgreSQL driver only where it is needed.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from jitaccess.ports import StoredRecord

BATCH = 5000
_FIELDS = "actor, action, subject, outcome, justification, ticket, comment"

# `at` is naive UTC. PostgreSQL formats it as `format_time` does, except years below 1000
# (strftime does not pad them): those come back NULL and are formatted here.
_POSTGRES_SELECT = (
    "SELECT seq, CASE WHEN at >= '1000-01-01' THEN "
    """to_char(at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END, """
    f"{_FIELDS}, data::text, prev_hash, hash FROM audit_log"
)
# SQLite holds what SQLAlchemy wrote, 'YYYY-MM-DD HH:MM:SS.ffffff'; anything else (which
# SQLAlchemy may still read as a time) comes back NULL and is read as SQLAlchemy reads it.
_SQLITE_TIME = "[1-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]"
_SQLITE_SELECT = (
    "SELECT seq, CASE WHEN typeof(at) = 'text' "
    f"AND at GLOB '{_SQLITE_TIME}.[0-9][0-9][0-9][0-9][0-9][0-9]' "
    "THEN replace(at, ' ', 'T') || 'Z' END, "
    f"{_FIELDS}, data, prev_hash, hash FROM audit_log"
)


def _where(first: int | None, last: int | None, mark: str) -> tuple[str, list[int]]:
    terms, params = [], []
    if first is not None:
        terms.append(f"seq >= {mark}")
        params.append(first)
    if last is not None:
        terms.append(f"seq <= {mark}")
        params.append(last)
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    return f"{where} ORDER BY seq", params


def stream_postgres(
    conn: psycopg.Connection[Any], first: int | None, last: int | None
) -> Generator[StoredRecord, None, None]:
    from psycopg.pq import TransactionStatus

    where, params = _where(first, last, "%s")
    # A server-side cursor lives in a transaction: an autocommit reader gets a read-only one.
    began = conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
    if began:
        conn.execute("BEGIN READ ONLY")
    try:
        with conn.cursor(name=f"jit_audit_{uuid.uuid4().hex[:12]}") as cursor:
            cursor.itersize = BATCH
            cursor.execute(_POSTGRES_SELECT + where, params)
            for row in cursor:
                yield row if row[1] is not None else _with_time(row, _postgres_time(conn, row[0]))
    finally:
        if began:
            conn.execute("ROLLBACK")


def stream_sqlite(
    conn: sqlite3.Connection, first: int | None, last: int | None
) -> Generator[StoredRecord, None, None]:
    where, params = _where(first, last, "?")
    cursor = conn.execute(_SQLITE_SELECT + where, params)
    try:
        for row in cursor:
            yield row if row[1] is not None else _with_time(row, _sqlite_time(conn, row[0]))
    finally:
        cursor.close()


def _with_time(row: tuple[Any, ...], at: str | None) -> StoredRecord:
    seq, _, *rest = row
    return (seq, at, *rest)


def _postgres_time(conn: psycopg.Connection[Any], seq: int) -> str | None:
    """As the domain-object reader formats it; None where it could not read it at all."""
    import psycopg

    from jitaccess.audit.chain import format_time

    try:
        row = conn.execute("SELECT at FROM audit_log WHERE seq = %s", [seq]).fetchone()
        return format_time(row[0].replace(tzinfo=UTC)) if row else None
    except (psycopg.DataError, ValueError, OverflowError):
        return None


def _sqlite_time(conn: sqlite3.Connection, seq: int) -> str | None:
    """As SQLAlchemy reads the column; None where it cannot."""
    from sqlalchemy.dialects import sqlite

    from jitaccess.adapters.db.tables import audit_log
    from jitaccess.audit.chain import format_time

    dialect = sqlite.dialect()
    read = audit_log.c.at.type.dialect_impl(dialect).result_processor(dialect, None)
    row = conn.execute("SELECT at FROM audit_log WHERE seq = ?", [seq]).fetchone()
    try:
        at = read(row[0]) if read and row else None
        return format_time(at) if at is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class AuditRangeReader:
    """Reads a range of the audit log on a connection of its own (`ports.StoredRangeReader`):
    the driver's connect arguments, as SQLAlchemy made them from the database URL."""

    dialect: str
    args: tuple[Any, ...]
    params: dict[str, Any] = field(repr=False)  # may hold a password

    def read(self, first: int | None, last: int | None) -> Generator[StoredRecord, None, None]:
        if self.dialect == "postgresql":
            import psycopg

            with psycopg.connect(*self.args, **self.params) as conn:
                conn.read_only = True
                yield from stream_postgres(conn, first, last)
            return
        connection = sqlite3.connect(*self.args, **self.params)
        try:
            connection.isolation_level = None  # the one SELECT is its own read transaction
            yield from stream_sqlite(connection, first, last)
        finally:
            connection.close()
