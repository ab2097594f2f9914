"""The unit of work's held writes (adapters/db/write_buffer.py) on real storage: what a unit of
work adds or saves is seen by its next statement, stored exactly as given (every column type),
sent once when a row is inserted and then saved, dropped on rollback, and a write that fails
surfaces at the commit as the database error (not as an audit failure) with nothing stored.
On PostgreSQL a request costs SQLAlchemy two statements (the policy version; the writes), and
a batch of grants is re-read and locked in one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from jitaccess.adapters.db import policy_repository
from jitaccess.bootstrap import Container
from jitaccess.domain.errors import AuditWriteFailed
from jitaccess.domain.model import (
    Approval,
    Decision,
    EndReason,
    Grant,
    GrantState,
    Request,
    RequestState,
    StageMark,
)
from jitaccess.ports import AuditEntry, Notification
from jitaccess.services.request_access import request_access
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on
from support.libpq_trace import traced

pytestmark = pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)

T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


@pytest.fixture
def app(kind: str, tmp_path: Path) -> Iterator[Container]:
    with container_on(kind, tmp_path) as container:
        yield container


def a_request(n: int = 1) -> Request:
    return Request(
        id=f"req_wb{n}",
        requester="alice",
        roles=("demo/read", "demo/admin"),
        duration=timedelta(minutes=30),
        justification='quotes " and \\ backslashes, ünïcode ✓, newline\nand tab\t',
        ticket=None,
        created_at=T0,
        policy_version=1,
        start_at=T0 + timedelta(hours=1),
        state=RequestState.APPROVED,
        pending_until=None,
        decided_at=T0 + timedelta(seconds=1),
        approvals=[
            Approval(
                approver="bob",
                decision=Decision.APPROVE,
                comment="",
                at=T0,
                counted_for=(StageMark("demo/admin", 0),),
            )
        ],
        grant_ids=[f"grt_wb{n}"],
        partial=True,
        break_glass=False,
        auto_approved={"demo/read": "rule 1"},
        escalations=[],
        params={"database": "orders"},
    )


def a_grant(n: int = 1, **changes: Any) -> Grant:
    values: dict[str, Any] = {
        "id": f"grt_wb{n}",
        "request_id": f"req_wb{n}",
        "principal": "alice",
        "role": "demo/read",
        "target": "demo",
        "access_key": f"demo|alice|read|{n}",
        "starts_at": T0,
        "ends_at": T0 + timedelta(minutes=30),
        "created_at": T0,
        "params": {"schema": "public", "ü": "✓"},
    }
    return Grant(**(values | changes))


def test_held_writes_are_seen_by_the_next_statement(app: Container) -> None:
    with app.uow() as uow:
        uow.requests.add(a_request())
        uow.grants.add(a_grant())
        assert uow.writes  # held, not sent yet
        assert uow.requests.get("req_wb1") == a_request()
        assert not uow.writes
        grant = uow.grants.get("grt_wb1")
        assert grant is not None and grant.params == {"schema": "public", "ü": "✓"}
        # A statement of another repository, or raw SQL, sees them too.
        uow.grants.save(a_grant(state=GrantState.ACTIVATING))
        count = uow.conn.execute(
            text("SELECT count(*) FROM grants WHERE state = 'activating'")
        ).scalar_one()
        assert count == 1
        uow.commit()


def test_every_column_type_is_stored_as_given(app: Container) -> None:
    grant = a_grant(
        state=GrantState.REVOKED,
        ended_at=T0 + timedelta(minutes=5, microseconds=7),
        end_reason=EndReason.REVOKED,
        ended_by="sam",
        end_comment="done",
        attempts=3,
        next_attempt_at=None,
        failing_since=T0,
        last_error='ConnectorError: it\'s "down"',
    )
    sealed = bytes(range(256))
    with app.uow() as uow:
        uow.requests.add(a_request())
        uow.grants.add(grant)
        uow.grants.set_credentials(grant.id, sealed)
        uow.notifications.add(
            Notification(
                id="ntf_wb1",
                recipient="alice",
                kind="approved",
                subject="req_wb1",
                message="yours ✓",
                created_at=T0,
                data={"nested": {"list": [1, 2.5, None, True]}},
            )
        )
        uow.commit()
    with app.uow.readonly() as uow:
        assert uow.requests.get("req_wb1") == a_request()
        assert uow.grants.get(grant.id) == grant
        (note,) = uow.notifications.list(recipient="alice")
        assert note.data == {"nested": {"list": [1, 2.5, None, True]}}
        assert note.message == "yours ✓" and note.created_at == T0
        stored = uow.conn.execute(
            text("SELECT credentials FROM grants WHERE id = :id"), {"id": grant.id}
        ).scalar_one()
    assert bytes(stored) == sealed


def test_a_row_inserted_then_saved_is_sent_once_in_its_last_state(app: Container) -> None:
    with app.uow() as uow:
        uow.grants.add(a_grant())
        uow.grants.save(a_grant(state=GrantState.ACTIVE, attempts=1))
        uow.grants.set_credentials("grt_wb1", b"secret")
        uow.grants.drop_credentials("grt_wb1")
        assert uow.writes is not None
        # One insert of the last state, nothing to update.
        assert [list(rows) for rows in uow.writes.inserts.values()] == [["grt_wb1"]]
        assert not uow.writes.updates
        uow.commit()
    with app.uow.readonly() as uow:
        assert uow.grants.get("grt_wb1") == a_grant(state=GrantState.ACTIVE, attempts=1)
        assert uow.conn.execute(text("SELECT credentials FROM grants")).scalar_one() is None


def test_rollback_drops_held_writes(app: Container) -> None:
    with app.uow() as uow:
        uow.requests.add(a_request())
        uow.grants.add(a_grant())
        uow.rollback()
        uow.commit()  # nothing left to send
    with app.uow() as uow:
        uow.grants.add(a_grant(2))
        # Left without commit: the unit of work rolls back on exit.
    with app.uow.readonly() as uow:
        assert uow.requests.list() == [] and uow.grants.list() == []


def test_a_failing_write_is_raised_at_commit_and_nothing_is_stored(app: Container) -> None:
    with app.uow() as uow:
        uow.grants.add(a_grant())
        uow.commit()
    with app.uow() as uow:
        uow.requests.add(a_request(2))
        uow.grants.add(a_grant(1))  # the same id again
        uow.audit.append(AuditEntry(actor="alice", action="test.write", subject="x", at=T0))
        with pytest.raises(DBAPIError) as raised:
            uow.commit()
    assert not isinstance(raised.value, AuditWriteFailed)
    with app.uow.readonly() as uow:
        assert uow.requests.get("req_wb2") is None
        assert [g.id for g in uow.grants.list()] == ["grt_wb1"]
        assert all(r.entry.action != "test.write" for r in uow.audit.last(50))
        assert verify_audit(uow).ok


def test_lock_many_reads_existing_grants_in_one_statement(app: Container, kind: str) -> None:
    with app.uow() as uow:
        for n in (3, 1, 2):
            uow.grants.add(a_grant(n))
        uow.commit()
    statements = _statements(app)
    with app.uow() as uow:
        locked = uow.grants.lock_many(["grt_wb2", "grt_missing", "grt_wb3", "grt_wb2"])
        assert list(locked) == ["grt_wb2", "grt_wb3"]
        assert locked["grt_wb3"] == a_grant(3)
        assert (len(statements) == 1 and "FOR UPDATE" in statements[0].upper()) or kind == "sqlite"
        if kind == "postgres":
            _assert_locked(app, "grt_wb2")
        assert uow.grants.lock_many([]) == {}
        uow.commit()


def test_a_request_costs_few_round_trips(app: Container, kind: str, tmp_path: Path) -> None:
    """PostgreSQL: BEGIN; the policy version; then the request, its grant and notifications,
    the audit records and COMMIT in one pipeline. SQLite: one executemany a table."""
    with app.uow.readonly() as uow:
        uow.policies.current()  # loads the policy into this process's cache
    statements = _statements(app)
    with app.uow() as uow, traced(uow.conn.connection.dbapi_connection, tmp_path / "t") as sent:
        made = request_access(  # commits
            uow,
            app.clock,
            app.connectors,
            requester="alice",
            roles=["demo/read"],
            duration=timedelta(minutes=5),
            justification="held writes",
        )
    assert isinstance(made, Request)
    if kind == "postgres":
        assert [s.split()[0] for s in statements] == ["SELECT"], statements  # the policy version
        # BEGIN; the policy version (a simple query); one pipeline: the writes (one
        # statement), the head made if missing, the records, COMMIT.
        assert sent.round_trips() == 3, sent.kinds
        assert sent.kinds.count("Query") == 2, sent.kinds
        assert sent.parsed() == ["WITH", "INSERT", "WITH", "COMMIT"]
    else:
        inserts = [s for s in statements if s.startswith("INSERT")]
        assert len(inserts) == len(set(inserts)), statements  # one executemany a table
    with app.uow.readonly() as uow:
        assert uow.grants.list(request_id=made.id)
        assert verify_audit(uow).ok


def test_a_commit_after_a_streamed_read_works(app: Container) -> None:
    # Loading a policy version streams its eligibility rows (psycopg's cursor.stream on
    # PostgreSQL). libpq 18 then hands the rows of the next query in a pipeline over in the
    # stream's chunked mode, which psycopg refuses: nothing the commit pipelines returns rows.
    policy_repository._policy_cache.clear()  # so this unit of work loads (streams) it
    with app.uow() as uow:
        assert uow.policies.current() is not None
        uow.grants.add(a_grant())
        uow.audit.append(AuditEntry(actor="alice", action="test.write", subject="x", at=T0))
        uow.wake_worker()
        uow.commit()
    with app.uow.readonly() as uow:
        assert uow.grants.get("grt_wb1") == a_grant()
        assert verify_audit(uow).ok


def _statements(app: Container) -> list[str]:
    """Every statement SQLAlchemy sends from now on (the listener lives as long as the app)."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(" ".join(str(args[2]).split()))

    event.listen(app.engine, "before_cursor_execute", record)
    return sent


def _assert_locked(app: Container, grant_id: str) -> None:
    url = app.engine.url.set(drivername="postgresql")
    dsn = url.render_as_string(hide_password=False)
    with (
        psycopg.connect(dsn, autocommit=True) as other,
        pytest.raises(psycopg.errors.LockNotAvailable),
    ):
        other.execute("SELECT 1 FROM grants WHERE id = %s FOR UPDATE NOWAIT", [grant_id])
