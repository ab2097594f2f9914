"""The worker's batched recording on real storage (SQLite and PostgreSQL): the outcomes of a
pass are committed together; when that transaction fails — one grant's row refuses the write,
or the database session died — each outcome is recorded on its own, none is lost or doubled,
and the audit chain verifies."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text

from jitaccess.bootstrap import Container
from jitaccess.clock import FakeClock
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.model import GrantState, Request
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, Connector, Connectors, ExistingAccess
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkerOptions, WorkReport, run_due_work
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on

POLICY = """
admins: [group:security]
users:
  alice: {groups: [engineers]}
  bob: {groups: [engineers]}
  dan: {groups: [engineers]}
  sam: {groups: [security]}
targets:
  demo: {type: fake}
roles:
  demo/read:
    target: demo
    grants: {scope: read}
    duration: {default: 10m, max: 1h, min: 1s}
eligibility:
  - principals: [group:engineers]
    roles: [demo/read]
"""

Hook = Callable[[Access], None]


class HookedConnector:
    """The real (fake) connector, with a hook run before each provision."""

    def __init__(self, inner: Connector, hook: Hook) -> None:
        self.inner, self.hook = inner, hook
        self.per_grant_account = inner.per_grant_account

    def provision(self, access: Access) -> Mapping[str, str] | None:
        self.hook(access)
        return self.inner.provision(access)

    def revoke(self, access: Access) -> None:
        self.inner.revoke(access)

    def extend(self, access: Access) -> None:
        self.inner.extend(access)

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        return self.inner.list_access(governed)

    def remove(self, existing: ExistingAccess) -> None:
        self.inner.remove(existing)

    def account_of(self, access: Access) -> str:
        return self.inner.account_of(access)

    def check(self) -> None:
        self.inner.check()


class HookedConnectors:
    def __init__(self, inner: Connectors, hook: Hook) -> None:
        self.inner, self.hook = inner, hook

    def for_target(self, target: Target) -> Connector:
        return HookedConnector(self.inner.for_target(target), self.hook)

    def per_grant_account(self, target: Target) -> bool:
        return self.inner.per_grant_account(target)

    def required_params(self, target: Target) -> tuple[str, ...]:
        return self.inner.required_params(target)

    def param_problems(self, target: Target, params: Mapping[str, str]) -> list[tuple[str, str]]:
        return self.inner.param_problems(target, params)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(kind: str, tmp_path: Path, clock: FakeClock) -> Iterator[Container]:
    with container_on(kind, tmp_path, policy=POLICY, clock=clock) as container:
        yield container


def _ask(app: Container, who: str) -> str:
    with app.uow() as uow:
        request = request_access(
            uow,
            app.clock,
            app.connectors,
            requester=who,
            roles=["demo/read"],
            duration=None,
            justification="batch test",
        )
    assert isinstance(request, Request)
    return request.grant_ids[0]


def _work(app: Container, hook: Hook | None = None) -> WorkReport:
    connectors = HookedConnectors(app.connectors, hook) if hook else app.connectors
    return run_due_work(app.uow, app.clock, connectors, app.box, WorkerOptions(jitter=lambda: 1.0))


def _states(app: Container, ids: list[str]) -> list[GrantState]:
    with app.uow.readonly() as uow:
        grants = [uow.grants.get(g) for g in ids]
    return [g.state for g in grants if g is not None]


def _check_audit(app: Container, ids: list[str]) -> None:
    with app.uow.readonly() as uow:
        records = list(uow.audit.iterate())
        verification = verify_audit(uow)
    assert verification.ok, verification
    for grant_id in ids:
        actions = [r.entry.action for r in records if r.entry.subject == grant_id]
        assert actions.count("grant.provisioned") == 1, (grant_id, actions)


def test_a_pass_records_its_outcomes_in_one_commit(app: Container) -> None:
    ids = [_ask(app, who) for who in ("alice", "bob", "dan")]
    commits: list[object] = []

    def committed(conn: object) -> None:
        commits.append(conn)

    event.listen(app.engine, "commit", committed)
    try:
        report = _work(app)
    finally:
        event.remove(app.engine, "commit", committed)
    assert report.provisioned == 3
    assert len(commits) == 2  # the claim, then the three outcomes
    assert _states(app, ids) == [GrantState.ACTIVE] * 3
    _check_audit(app, ids)


def test_one_target_failure_in_a_batch_is_retried_and_the_rest_recorded(
    app: Container, clock: FakeClock
) -> None:
    ids = [_ask(app, who) for who in ("alice", "bob", "dan")]
    refused = ids[1]

    def refuse(access: Access) -> None:
        if access.grant_id == refused:
            raise ConnectorError("target refuses")

    report = _work(app, refuse)
    assert (report.provisioned, report.failures) == (2, 1)
    assert _states(app, ids) == [GrantState.ACTIVE, GrantState.ACTIVATING, GrantState.ACTIVE]
    clock.advance(timedelta(seconds=1))
    assert _work(app).provisioned == 1
    _check_audit(app, ids)


def _poison(app: Container, kind: str, grant_id: str) -> None:
    """Make the database refuse to mark `grant_id` active."""
    with app.engine.begin() as conn:
        if kind == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER poison BEFORE UPDATE ON grants "
                    f"WHEN NEW.id = '{grant_id}' AND NEW.state = 'active' "
                    "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
                )
            )
            return
        conn.execute(
            text(
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'poisoned row'; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER poison BEFORE UPDATE ON grants FOR EACH ROW "
                f"WHEN (NEW.id = '{grant_id}' AND NEW.state = 'active') "
                "EXECUTE FUNCTION poison()"
            )
        )


def test_a_row_that_refuses_its_record_does_not_lose_the_others(
    app: Container, kind: str, clock: FakeClock
) -> None:
    ids = [_ask(app, who) for who in ("alice", "bob", "dan")]
    poisoned = ids[1]
    _poison(app, kind, poisoned)
    report = _work(app)
    assert report.provisioned == 2
    assert _states(app, ids) == [GrantState.ACTIVE, GrantState.ACTIVATING, GrantState.ACTIVE]
    with app.uow.readonly() as uow:
        stuck = uow.grants.get(poisoned)
    assert stuck is not None and stuck.attempts == 1
    assert "poisoned row" in (stuck.last_error or "")
    with app.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER poison" + (" ON grants" if kind == "postgres" else "")))
    clock.advance(timedelta(seconds=1))
    assert _work(app).provisioned == 1
    assert _states(app, ids) == [GrantState.ACTIVE] * 3
    _check_audit(app, ids)


# Sessions are a PostgreSQL matter.
@pytest.mark.parametrize("kind", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_outcomes_survive_the_worker_losing_its_database_session(app: Container, kind: str) -> None:
    ids = [_ask(app, who) for who in ("alice", "bob", "dan")]
    dsn = app.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    cut: list[str] = []

    def cut_sessions(access: Access) -> None:
        # Between the claim and the record: every pooled session of the worker dies.
        if cut:
            return
        cut.append(access.grant_id)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    report = _work(app, cut_sessions)
    assert cut
    assert report.provisioned + report.failures == 3
    # Whatever was noted as failed is provisioned on the retry: nothing lost, nothing doubled.
    for _ in range(3):
        if _states(app, ids) == [GrantState.ACTIVE] * 3:
            break
        app.clock.advance(timedelta(seconds=1))  # type: ignore[attr-defined]
        _work(app)
    assert _states(app, ids) == [GrantState.ACTIVE] * 3
    _check_audit(app, ids)
