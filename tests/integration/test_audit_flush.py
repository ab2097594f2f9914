"""Appending to the audit chain at commit: concurrent writers form one chain, the very first ones
too (when the head row does not exist yet); on PostgreSQL the append is two statements."""

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


def test_the_append_is_two_statements_on_postgresql(app: Container, kind: str) -> None:
    statements: list[str] = []

    def record(*args: Any) -> None:
        verb = str(args[2]).split()[0].upper()
        if verb != "BEGIN":  # SQLite's BEGIN IMMEDIATE, sent when the transaction starts
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
    # Lock and read the head; insert the records and move the head (SQLite: BEGIN IMMEDIATE
    # already serialises writers: read the head, insert, write the head).
    assert statements == (
        ["SELECT", "WITH"] if kind == "postgres" else ["SELECT", "INSERT", "INSERT"]
    )
