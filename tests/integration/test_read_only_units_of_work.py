"""Read-only units of work on real storage: outside transactions unless asked for a snapshot,
never writing, and leaving their pooled connection as a writer expects it. SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from jitaccess.adapters.db.tables import api_tokens, notifications
from jitaccess.adapters.db.unit_of_work import (
    ReadOnlyViolation,
    SqlUnitOfWorkFactory,
    make_engine,
)
from jitaccess.bootstrap import Container
from jitaccess.domain.errors import NotFound
from jitaccess.ports import ApiToken, Notification
from jitaccess.services.context import refuse
from jitaccess.services.manage_tokens import create_token
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on

pytestmark = pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)


@pytest.fixture
def app(kind: str, tmp_path: Path) -> Iterator[Container]:
    with container_on(kind, tmp_path) as container:
        yield container


def _token(app: Container, principal: str) -> ApiToken:
    with app.uow() as uow:
        token, _ = create_token(uow, app.clock, principal=principal, created_by="test")
    return token


def _tokens(app: Container) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(api_tokens)).scalar_one())


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_read_only_unit_of_work_refuses_to_write(app: Container, snapshot: bool) -> None:
    token = ApiToken(
        id="tok_ro",
        principal="alice",
        token_hash="0" * 64,
        created_at=app.clock.now(),
        created_by="t",
    )
    with app.uow.readonly(snapshot=snapshot) as uow:
        with pytest.raises(ReadOnlyViolation):
            uow.tokens.add(token)
        with pytest.raises(ReadOnlyViolation):
            uow.conn.execute(text("DELETE FROM api_tokens"))
        # Reading still works after a refused write.
        assert uow.tokens.find("0" * 64) is None
    assert _tokens(app) == 0


def test_a_refusal_recorded_by_a_reader_is_written_in_a_transaction_of_its_own(
    app: Container,
) -> None:
    with app.uow.readonly() as uow, pytest.raises(NotFound):
        raise refuse(uow, app.clock.now(), "carol", "grant.read", "grt_x", NotFound("no grant"))
    with app.uow.readonly(snapshot=True) as uow:
        last = uow.audit.last(1)[0]
        assert (last.entry.actor, last.entry.action, last.entry.outcome) == (
            "carol",
            "grant.read",
            "refused",
        )
        assert verify_audit(uow).ok


def test_a_reader_sees_each_commit_and_a_snapshot_reader_does_not(app: Container) -> None:
    first = _token(app, "alice")
    with app.uow.readonly() as reader, app.uow.readonly(snapshot=True) as snapshot:
        assert reader.tokens.find(first.token_hash) is not None
        assert snapshot.tokens.find(first.token_hash) is not None
        second = _token(app, "bob")
        assert reader.tokens.find(second.token_hash) is not None
        assert snapshot.tokens.find(second.token_hash) is None


def test_a_reader_streams_rows_from_a_server_side_cursor(app: Container) -> None:
    for who in ("alice", "bob", "carol"):
        _token(app, who)
    with app.uow.readonly() as uow:
        query = select(api_tokens.c.principal).order_by(api_tokens.c.principal)
        rows = uow.conn.execute(query, execution_options={"yield_per": 1})
        assert [r.principal for r in rows] == ["alice", "bob", "carol"]


def test_a_writer_after_a_reader_on_the_same_connection_gets_a_transaction(
    app: Container,
) -> None:
    # One pooled connection: the writer gets the very connection the readers had.
    engine = make_engine(app.settings.resolved_database_url, pool_size=1)
    factory = SqlUnitOfWorkFactory(engine)
    count = select(func.count()).select_from(notifications)
    try:
        with factory.readonly() as uow:
            before = uow.conn.execute(count).scalar_one()
        for snapshot in (False, True):
            with factory.readonly(snapshot=snapshot) as uow:
                uow.tokens.find("x")
            with factory() as uow:
                uow.notifications.add(
                    Notification(
                        id=f"ntf_{snapshot}",
                        recipient="t",
                        kind="t",
                        subject="s",
                        message="m",
                        created_at=app.clock.now(),
                    )
                )
                assert uow.conn.execute(count).scalar_one() == before + 1  # sent
                uow.rollback()  # in a transaction: nothing stays
            with factory.readonly() as uow:
                assert uow.conn.execute(count).scalar_one() == before
    finally:
        engine.dispose()
