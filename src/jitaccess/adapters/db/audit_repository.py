"""The audit trail over SQLAlchemy Core: entries are buffered during a unit of work and chained
onto the head, under the head row's lock, when it commits."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Row, select, update

from jitaccess.adapters.db.tables import audit_head, audit_log
from jitaccess.audit.chain import GENESIS, record_fields, seal
from jitaccess.ports import AuditEntry, AuditRecord


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


class SqlAudit:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: list[AuditEntry] = []

    def append(self, entry: AuditEntry) -> None:
        self.pending.append(entry)

    def flush(self) -> None:
        """Chain the buffered entries onto the head, under the head row's lock."""
        if not self.pending:
            return
        head = self.conn.execute(
            select(audit_head.c.seq, audit_head.c.hash)
            .where(audit_head.c.id == 1)
            .with_for_update()
        ).first()
        if head is None:
            self.conn.execute(audit_head.insert().values(id=1, seq=0, hash=GENESIS))
        seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS)
        rows = []
        for entry in self.pending:
            record = seal(seq, prev_hash, entry)
            rows.append(
                record_fields(record.seq, entry)
                | {"prev_hash": record.prev_hash, "hash": record.hash}
            )
            seq, prev_hash = record.seq, record.hash
        self.conn.execute(audit_log.insert(), rows)
        self.conn.execute(
            update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev_hash)
        )
        self.pending.clear()

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
