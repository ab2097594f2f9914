"""Appending to the audit chain at commit: concurrent writers form one chain, the very first ones
too (when the head row does not exist yet); on PostgreSQL the records are sealed by the server
and committed in one round trip."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from jitaccess.bootstrap import Container
from jitaccess.ports import AuditEntry
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on
from support.libpq_trace import traced

pytestmark = pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)

AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def app(kind: str, tmp_path: Path) -> Iterator[Container]:
    with container_on(kind, tmp_path) as container:
        yield container


def entry(n: int) -> AuditEntry:
    return AuditEntry(
        actor=f"user{n}",
        action="grant.expired",
        subject=f"grt_{n}",
        at=AT + timedelta(microseconds=n),
        data={"n": n, "roles": ("demo/read",), "ünï": "✓"},
    )


def test_concurrent_first_writers_form_one_chain(app: Container, kind: str) -> None:
    with app.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log"))
        conn.execute(text("DELETE FROM audit_head"))  # as in a database never written to
    writers = 6 if kind == "sqlite" else 12
    ready = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            with app.uow() as uow:
                for n in range(3):
                    uow.audit.append(entry(writer * 10 + n))
                ready.wait(timeout=30)
                uow.commit()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    with app.uow.readonly() as uow:
        result = verify_audit(uow)
    assert (result.ok, result.records) == (True, 3 * writers)
    with app.engine.connect() as conn:
        head = conn.execute(text("SELECT seq, hash FROM audit_head")).one()
    assert tuple(head) == (3 * writers, result.head)


def test_records_are_stored_as_before(app: Container) -> None:
    # The data column holds what SQLAlchemy's JSON type wrote before: json.dumps of the data
    # as sealed (through JSON once: the tuple a list).
    with app.uow() as uow:
        uow.audit.append(entry(1))
        uow.commit()
    with app.engine.connect() as conn:
        data, at = conn.execute(
            text("SELECT data, at FROM audit_log ORDER BY seq DESC LIMIT 1")
        ).one()
    stored = data if isinstance(data, str) else json.dumps(data)
    assert stored == json.dumps({"n": 1, "roles": ["demo/read"], "ünï": "✓"})
    assert str(at).startswith("2026-01-05 09:00:00.000001")


def test_how_the_append_reaches_the_database(app: Container, kind: str, tmp_path: Path) -> None:
    """SQLite: BEGIN IMMEDIATE already serialises writers: read the head, insert, write the
    head. PostgreSQL: the head's lock is never held while the server waits for this process:
    the records are sealed by the server and COMMIT goes in the same round trip (one Sync, in
    libpq's trace)."""
    if kind == "sqlite":
        assert _sqlite_statements(app) == ["SELECT", "INSERT", "INSERT"]
        return
    with app.uow() as uow:
        uow.policies.current()  # the transaction has begun, as usual
        for n in range(3):
            uow.audit.append(entry(n))
        with traced(uow.conn.connection.dbapi_connection, tmp_path / "libpq.trace") as sent:
            uow.commit()
    # Everything is sent, then one Sync (and a Flush) ends the round trip.
    assert sent.round_trips() == 1, sent.kinds
    assert sent.kinds[sent.kinds.index("Sync") :] in (["Sync"], ["Sync", "Flush"]), sent.kinds
    # Make the head if it is missing (else nothing), seal and insert the records, COMMIT.
    assert sent.parsed() == ["INSERT", "WITH", "COMMIT"]
    with app.uow.readonly() as uow:
        result = verify_audit(uow)
    assert result.ok and result.records >= 3


def _sqlite_statements(app: Container) -> list[str]:
    statements: list[str] = []

    def record(*args: Any) -> None:
        verb = str(args[2]).split()[0].upper()
        if verb != "BEGIN":  # BEGIN IMMEDIATE, sent when the transaction starts
            statements.append(verb)

    with app.uow() as uow:
        for n in range(3):
            uow.audit.append(entry(n))
        event.listen(app.engine, "before_cursor_execute", record)
        try:
            uow.audit.flush()
        finally:
            event.remove(app.engine, "before_cursor_execute", record)
        uow.commit()
    return statements
