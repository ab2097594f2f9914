"""The audit trail over SQLAlchemy Core: entries are buffered during a unit of work and chained
onto the head, under the head row's lock, when it commits; the verifier streams it as stored."""

from __future__ import annotations

import builtins
import json
from collections.abc import Generator, Iterator
from typing import Any

from sqlalchemy import Connection, Row, func, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from jitaccess.adapters.db.audit_reader import AuditRangeReader, stream_postgres, stream_sqlite
from jitaccess.adapters.db.tables import UTCDateTime, audit_head, audit_log
from jitaccess.audit.chain import GENESIS, record_fields, seal
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
# The first append ever: make the head row (a concurrent first writer waits on it, then
# locks the row the other one made).
_MAKE_HEAD = text(
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING"
).bindparams(genesis=GENESIS)
_COLUMNS = [c.name for c in audit_log.columns]
_ARRAY_TYPES = {
    "seq": "bigint",
    "at": "timestamp",
    "data": "json",
    "justification": "text",
    "comment": "text",
}
# PostgreSQL: the records and the new head in one statement (a data-modifying CTE).
_APPEND_POSTGRES = text(
    f"WITH appended AS (INSERT INTO audit_log ({', '.join(_COLUMNS)}) "
    "SELECT * FROM unnest("
    + ", ".join(f"CAST(:{c} AS {_ARRAY_TYPES.get(c, 'varchar')}[])" for c in _COLUMNS)
    + ")) UPDATE audit_head SET seq = :head_seq, hash = :head_hash WHERE id = 1"
)
# SQLite: BEGIN IMMEDIATE already serialises writers; the head is written with an upsert.
_UPSERT_HEAD = sqlite_insert(audit_head).values(id=1)
_UPSERT_HEAD = _UPSERT_HEAD.on_conflict_do_update(
    index_elements=[audit_head.c.id],
    set_={"seq": _UPSERT_HEAD.excluded.seq, "hash": _UPSERT_HEAD.excluded.hash},
)
_AT = UTCDateTime()


class SqlAudit:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: list[AuditEntry] = []
        self.is_postgres = conn.dialect.name == "postgresql"

    def append(self, entry: AuditEntry) -> None:
        self.pending.append(entry)

    def flush(self) -> None:
        """Chain the buffered entries onto the head, under the head row's lock: on PostgreSQL
        two statements (lock and read the head; insert the records and move the head)."""
        if not self.pending:
            return
        if self.is_postgres:
            self._flush_postgres()
        else:
            self._flush_sqlite()
        self.pending.clear()

    def _flush_postgres(self) -> None:
        head = self.conn.execute(_LOCK_HEAD_FOR_UPDATE).first()
        if head is None:
            self.conn.execute(_MAKE_HEAD)
            head = self.conn.execute(_LOCK_HEAD_FOR_UPDATE).one()
        seq, prev_hash = head.seq, head.hash
        columns: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
        for entry in self.pending:
            record = seal(seq, prev_hash, entry)
            row = record_fields(record.seq, record.entry)
            row |= {
                "at": _AT.process_bind_param(record.entry.at, self.conn.dialect),
                # As SQLAlchemy's JSON type writes it.
                "data": json.dumps(row["data"]),
                "prev_hash": record.prev_hash,
                "hash": record.hash,
            }
            for name, values in columns.items():
                values.append(row[name])
            seq, prev_hash = record.seq, record.hash
        self.conn.execute(_APPEND_POSTGRES, {**columns, "head_seq": seq, "head_hash": prev_hash})

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
