"""The audit trail over SQLAlchemy Core: entries are buffered during a unit of work and chained
onto the head, under the head row's lock, when it commits; the verifier streams it as stored."""

from __future__ import annotations

import builtins
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Row, func, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from jitaccess.adapters.db.audit_reader import AuditRangeReader, stream_postgres, stream_sqlite
from jitaccess.adapters.db.tables import audit_head, audit_log
from jitaccess.adapters.db.write_buffer import WriteBuffer, insert_sql
from jitaccess.audit.chain import GENESIS, record_fields, seal
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


_LOCK_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
_LOCK_HEAD_FOR_UPDATE = _LOCK_HEAD.with_for_update()
# The same, after the unit of work's held writes in one statement (write_buffer.py).
_LOCK_HEAD_SQL = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE"
# The first append ever: make the head row (a concurrent first writer waits on it, then
# locks the row the other one made).
_MAKE_HEAD = text(
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING"
).bindparams(genesis=GENESIS)
# PostgreSQL: the records and the new head in one statement (a data-modifying CTE), with the
# unit of work's NOTIFY when it has one (transactional: heard only if it commits).
_APPEND_SQL = "WITH appended AS ({}) UPDATE audit_head SET seq = %(head_seq)s, hash = %(head_hash)s"
_HEAD_ROW = " WHERE id = 1"
_NOTIFY_WITH_HEAD = " FROM (SELECT pg_notify(%(channel)s, %(payload)s)) AS notified WHERE id = 1"
NOTIFY = text("SELECT pg_notify(:channel, :payload)")
_NOTIFY_SQL = "SELECT pg_notify(%(channel)s, %(payload)s)"
# SQLite: BEGIN IMMEDIATE already serialises writers; the head is written with an upsert.
_UPSERT_HEAD = sqlite_insert(audit_head).values(id=1)
_UPSERT_HEAD = _UPSERT_HEAD.on_conflict_do_update(
    index_elements=[audit_head.c.id],
    set_={"seq": _UPSERT_HEAD.excluded.seq, "hash": _UPSERT_HEAD.excluded.hash},
)
Notify = tuple[str, str]  # a NOTIFY's channel and payload


@contextmanager
def _audit_write() -> Iterator[None]:
    try:
        yield
    except DBAPIError as error:
        raise AuditWriteFailed(
            "the audit record could not be written, so the change was not made"
        ) from error


class SqlAudit:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: list[AuditEntry] = []
        self.is_postgres = conn.dialect.name == "postgresql"

    def append(self, entry: AuditEntry) -> None:
        self.pending.append(entry)

    def flush(self, writes: WriteBuffer | None = None, notify: Notify | None = None) -> bool:
        """Send the unit of work's held `writes`, then chain the buffered entries onto the head,
        under the head row's lock. On PostgreSQL two statements: the writes with the head's
        lock and read; the records inserted with the head moved. `notify` (channel, payload;
        PostgreSQL) rides along with the last statement: True when it was sent. A failure of
        the writes is raised as it came; a failure to write the records as `AuditWriteFailed`."""
        notify = notify if self.is_postgres else None
        if not self.pending:
            return self._send_writes(writes, notify)
        if writes and self.is_postgres:
            assert writes is not None
            sql, params = writes.postgres_statement(_LOCK_HEAD_SQL)
            head = self.conn.exec_driver_sql(sql, params).first()
            with _audit_write():
                self._append_postgres(None if head is None else (head.seq, head.hash), notify)
        else:
            if writes is not None:
                writes.flush()
            with _audit_write():
                if self.is_postgres:
                    locked = self.conn.execute(_LOCK_HEAD_FOR_UPDATE).first()
                    self._append_postgres(
                        None if locked is None else (locked.seq, locked.hash), notify
                    )
                else:
                    self._flush_sqlite()
        self.pending.clear()
        return notify is not None

    def _send_writes(self, writes: WriteBuffer | None, notify: Notify | None) -> bool:
        if not writes:
            return False
        assert writes is not None
        if notify is None or not self.is_postgres:
            writes.flush()
            return False
        sql, params = writes.postgres_statement(_NOTIFY_SQL)
        self.conn.exec_driver_sql(sql, {**params, "channel": notify[0], "payload": notify[1]})
        return True

    def _append_postgres(self, head: tuple[int, str] | None, notify: Notify | None) -> None:
        """Insert the records after `head` (seq, hash; None before the first append ever)."""
        if head is None:
            self.conn.execute(_MAKE_HEAD)
            made = self.conn.execute(_LOCK_HEAD_FOR_UPDATE).one()
            head = (made.seq, made.hash)
        seq, prev_hash = head
        rows = []
        for entry in self.pending:
            record = seal(seq, prev_hash, entry)
            rows.append(
                record_fields(record.seq, record.entry)
                | {"prev_hash": record.prev_hash, "hash": record.hash}
            )
            seq, prev_hash = record.seq, record.hash
        params: dict[str, Any] = {"head_seq": seq, "head_hash": prev_hash}
        sql = _APPEND_SQL.format(insert_sql(audit_log, rows, params, "a"))
        if notify is None:
            sql += _HEAD_ROW
        else:
            sql += _NOTIFY_WITH_HEAD
            params["channel"], params["payload"] = notify
        self.conn.exec_driver_sql(sql, params)

    def _flush_sqlite(self) -> None:
        head = self.conn.execute(_LOCK_HEAD).first()
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
