"""The audit trail over SQLAlchemy Core: entries are buffered during a unit of work and chained
onto the head, under the head row's lock, when it commits; the verifier streams it as stored."""

from __future__ import annotations

import builtins
import json
from collections.abc import Generator, Iterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Row, func, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from jitaccess.adapters.db.audit_reader import AuditRangeReader, stream_postgres, stream_sqlite
from jitaccess.adapters.db.tables import audit_head, audit_log
from jitaccess.adapters.db.write_buffer import WriteBuffer
from jitaccess.audit.chain import (
    GENESIS,
    canonical_parts,
    format_time,
    normalised,
    record_fields,
    seal,
)
from jitaccess.domain.errors import AuditWriteFailed
from jitaccess.ports import AuditEntry, AuditRecord, StoredRecord


def _record_from(row: Row[Any]) -> AuditRecord:
    m = row._mapping
    entry = AuditEntry(
        actor=m["actor"],
        action=m["action"],
        subject=m["subject"],
        at=m["at"],
        outcome=m["outcome"],
        justification=m["justification"],
        ticket=m["ticket"],
        comment=m["comment"],
        data=m["data"],
    )
    return AuditRecord(seq=m["seq"], entry=entry, prev_hash=m["prev_hash"], hash=m["hash"])


# SQLite: BEGIN IMMEDIATE has already serialised writers.
_READ_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
# PostgreSQL: the records sealed by the server, under the head's lock, in one statement sent
# with COMMIT (see `SqlAudit.commit_postgres`): lock the head, hash each record onto the one
# before it (sha256 of the previous hash and the record's canonical JSON, whose parts around
# the record number Python made: chain.canonical_parts), insert them, move the head, and send
# the unit of work's NOTIFY when it has one. Without a head row the records get no number and
# the insert fails (NOT NULL): nothing is ever committed unaudited.
_COLUMNS = [c.name for c in audit_log.columns]
_ENTRY_COLUMNS = (
    "n int, at timestamp, actor varchar, action varchar, subject varchar, outcome varchar, "
    "justification text, ticket varchar, comment text, data json, before text, after text"
)
_APPEND_AND_MOVE = f"""WITH RECURSIVE
head AS (SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE),
entry AS (SELECT * FROM json_to_recordset(CAST(%(records)s AS json)) AS e({_ENTRY_COLUMNS})),
chain AS (
    SELECT 0 AS n, seq, CAST(hash AS text) AS hash, CAST(NULL AS text) AS prev FROM head
    UNION ALL
    SELECT e.n, c.seq + 1,
           encode(sha256(convert_to(c.hash || e.before || (c.seq + 1) || e.after, 'UTF8')), 'hex'),
           c.hash
    FROM chain c JOIN entry e ON e.n = c.n + 1
),
appended AS (
    INSERT INTO audit_log ({", ".join(_COLUMNS)})
    SELECT c.seq, e.at, e.actor, e.action, e.subject, e.outcome, e.justification, e.ticket,
           e.comment, e.data, c.prev, c.hash
    FROM entry e LEFT JOIN chain c ON c.n = e.n
)
UPDATE audit_head SET seq = last.seq, hash = last.hash
FROM (SELECT seq, hash FROM chain ORDER BY n DESC LIMIT 1) AS last"""
_APPEND_SQL = {
    False: _APPEND_AND_MOVE + " WHERE audit_head.id = 1",
    True: _APPEND_AND_MOVE
    + ", (SELECT pg_notify(%(channel)s, %(payload)s)) AS notified WHERE audit_head.id = 1",
}
_IDLE = TransactionStatus.IDLE
# The first append ever makes the head row (a concurrent first writer waits on it, then locks
# the row the other one made); afterwards it does nothing.
_MAKE_HEAD_SQL = (
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + GENESIS + "') "
    "ON CONFLICT (id) DO NOTHING"
)
NOTIFY = text("SELECT pg_notify(:channel, :payload)")
# SQLite: BEGIN IMMEDIATE already serialises writers; the head is written with an upsert.
_UPSERT_HEAD = sqlite_insert(audit_head).values(id=1)
_UPSERT_HEAD = _UPSERT_HEAD.on_conflict_do_update(
    index_elements=[audit_head.c.id],
    set_={"seq": _UPSERT_HEAD.excluded.seq, "hash": _UPSERT_HEAD.excluded.hash},
)
Notify = tuple[str, str]  # a NOTIFY's channel and payload


_AUDIT_FAILED = "the audit record could not be written, so the change was not made"


class SqlAudit:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: list[AuditEntry] = []
        self.is_postgres = conn.dialect.name == "postgresql"

    def append(self, entry: AuditEntry) -> None:
        self.pending.append(entry)

    def flush(self, writes: WriteBuffer | None = None) -> None:
        """SQLite: send the unit of work's held `writes`, then chain the pending entries onto
        the head (a failure to write them raises `AuditWriteFailed`). PostgreSQL commits through
        `commit_postgres` instead."""
        if writes is not None:
            writes.flush()
        if not self.pending:
            return
        if self.is_postgres:
            raise RuntimeError("on PostgreSQL the audit records are written by commit_postgres")
        try:
            self._flush_sqlite()
        except DBAPIError as error:
            raise AuditWriteFailed(_AUDIT_FAILED) from error
        self.pending.clear()

    def commit_postgres(self, writes: WriteBuffer | None, notify: Notify | None) -> None:
        """Send what is left of the transaction and COMMIT, in one round trip (a pipeline): the
        held `writes` (one statement), the pending audit records — sealed by the server under
        the head's lock, which is thus held while the server works and never while it waits
        for this process — and `notify` (channel, payload). A failing write is raised as
        SQLAlchemy raises database errors; a failure to write the records as
        `AuditWriteFailed`."""
        if notify is not None and not self.pending:
            # Rare (most commits that wake a worker also audit): on its own, with SQLAlchemy,
            # as it returns a row (see WriteBuffer.postgres_statement); the held writes go
            # just before it.
            self.conn.execute(NOTIFY, {"channel": notify[0], "payload": notify[1]})
        raw = self.conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        statements: list[tuple[str, dict[str, Any]]] = []
        if writes:
            statements.append(writes.postgres_statement())
        if self.pending:
            statements.append((_MAKE_HEAD_SQL, {}))  # the first append ever; else it does nothing
            statements.append((_APPEND_SQL[notify is not None], self._records_params(notify)))
        if not statements and raw.info.transaction_status == _IDLE:
            return  # nothing was done: nothing to commit
        cursors = [raw.cursor() for _ in statements]
        try:
            with raw.pipeline():
                for cursor, (sql, params) in zip(cursors, statements, strict=True):
                    cursor.execute(sql, params or None)
                # As a statement: Connection.commit() would sync once more on its own.
                raw.execute(b"COMMIT")
        except psycopg.Error as error:
            if raw.broken:
                # Sent outside SQLAlchemy, which would otherwise hand the dead connection out
                # again.
                self.conn.invalidate()
            # The first statement whose result never came failed (the rest were skipped); if
            # all came, COMMIT failed.
            failed = next((i for i, c in enumerate(cursors) if c.pgresult is None), None)
            if failed is not None and self.pending and failed >= len(statements) - 2:
                raise AuditWriteFailed(_AUDIT_FAILED) from error
            sql, params = statements[failed] if failed is not None else ("COMMIT", {})
            raise DBAPIError.instance(
                sql,
                params,
                error,
                psycopg.Error,
                connection_invalidated=raw.broken,
                dialect=self.conn.dialect,
            ) from error
        self.pending.clear()

    def _records_params(self, notify: Notify | None) -> dict[str, Any]:
        """The pending entries as `_APPEND_SQL` reads them: each with its canonical JSON split
        around the record number (chain.canonical_parts), which the server fills in."""
        records = []
        for n, entry in enumerate(self.pending, start=1):
            kept = normalised(entry)
            before, after = canonical_parts(kept)
            fields = record_fields(n, kept)
            del fields["seq"]  # the server numbers them
            fields |= {
                "n": n,
                "at": format_time(kept.at).rstrip("Z"),
                "before": before.decode("ascii"),
                "after": after.decode("ascii"),
            }
            records.append(fields)
        params: dict[str, Any] = {"records": json.dumps(records)}
        if notify is not None:
            params["channel"], params["payload"] = notify
        return params

    def _flush_sqlite(self) -> None:
        head = self.conn.execute(_READ_HEAD).first()
        seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS)
        rows = []
        for entry in self.pending:
            record = seal(seq, prev_hash, entry)
            rows.append(
                record_fields(record.seq, record.entry)
                | {"prev_hash": record.prev_hash, "hash": record.hash}
            )
            seq, prev_hash = record.seq, record.hash
        self.conn.execute(audit_log.insert(), rows)
        self.conn.execute(_UPSERT_HEAD, {"seq": seq, "hash": prev_hash})

    def records(self, *, after: int = 0, limit: int = 1000) -> builtins.list[AuditRecord]:
        query = (
            select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(limit)
        )
        return [_record_from(r) for r in self.conn.execute(query)]

    def last(self, limit: int) -> builtins.list[AuditRecord]:
        query = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        return list(reversed([_record_from(r) for r in self.conn.execute(query)]))

    def iterate(self, batch: int = 5000) -> Iterator[AuditRecord]:
        after = 0
        while True:
            page = self.records(after=after, limit=batch)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].seq

    # --- for the verifier (ports.StoredAuditChain) ---------------------------------------------

    def last_seq(self) -> int | None:
        last: int | None = self.conn.execute(select(func.max(audit_log.c.seq))).scalar()
        return last

    def stored(
        self, first: int | None = None, last: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        dbapi = self.conn.connection.dbapi_connection
        if self.is_postgres:
            return stream_postgres(dbapi, first, last)  # type: ignore[arg-type]
        return stream_sqlite(dbapi, first, last)  # type: ignore[arg-type]

    def range_reader(self) -> AuditRangeReader | None:
        engine = self.conn.engine
        args, params = engine.dialect.create_connect_args(engine.url)
        if engine.dialect.name == "sqlite":
            target = str(args[0]) if args else ""
            if target in ("", ":memory:") or "mode=memory" in target:
                return None  # another process would open an empty database
        # Plain values only: the psycopg dialect also passes its adapters, not needed here.
        plain = {k: v for k, v in params.items() if isinstance(v, str | int | float | bool)}
        return AuditRangeReader(engine.dialect.name, tuple(args), plain)
