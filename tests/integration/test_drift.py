"""Drift: access in a target that no grant explains is found, alerted, audited and — where the
target says `drift: remove` — taken away; a grant whose access went missing is provisioned
again; periodic jobs run once per interval across workers. On SQLite and PostgreSQL stores,
with the fake connector and with a real PostgreSQL target."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.bootstrap import Container
from jitaccess.clock import FakeClock
from jitaccess.domain.model import GrantState
from jitaccess.entrypoints.worker import Worker
from jitaccess.services.reconcile import check_targets, reconcile
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on, granted, work
from support.postgres import private_cluster, role_exists

POLICY = """
admins: [group:security]
users:
  alice: {groups: [engineers]}
  sam: {groups: [security]}
targets:
  demo: {type: fake, drift: DRIFT}
roles:
  demo/read:
    target: demo
    grants: {scope: read}
    duration: {default: 30m, max: 1h}
eligibility:
  - principals: [group:engineers]
    roles: [demo/read]
"""

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def app_with(kind: str, tmp_path: Path, drift: str) -> Iterator[Container]:
    with container_on(
        kind, tmp_path, policy=POLICY.replace("DRIFT", drift), clock=FakeClock()
    ) as c:
        yield c


def clock_of(app: Container) -> FakeClock:
    assert isinstance(app.clock, FakeClock)
    return app.clock


def fake(app: Container) -> FakeConnector:
    connector = app.connectors.for_target(app.current_policy().targets["demo"])
    assert isinstance(connector, FakeConnector)
    return connector


def grant_alice(app: Container) -> str:
    request = granted(app, "demo/read")
    return request.grant_ids[0]


def actions(app: Container) -> list[str]:
    with app.uow.readonly() as uow:
        return [r.entry.action for r in uow.audit.iterate()]


def test_access_made_behind_our_back_is_reported_once_and_alerted(
    kind: str, tmp_path: Path
) -> None:
    for app in app_with(kind, tmp_path, "report"):
        grant_alice(app)
        account = fake(app).plant("mallory", "demo/read")
        first = reconcile(app.uow, app.clock, app.connectors)
        assert first.unexplained == 1 and first.removed == 0
        assert first.targets[0].unexplained == [account]
        clock_of(app).advance(timedelta(minutes=5))
        second = reconcile(app.uow, app.clock, app.connectors)
        assert second.unexplained == 1
        assert fake(app).has("mallory", "demo/read")  # report only
        with app.uow.readonly() as uow:
            (finding,) = uow.drift.list(state="open")
            inbox = uow.notifications.list(recipient="sam")
        assert (finding.account, finding.kind) == (account, "unexplained")
        assert finding.last_seen_at > finding.found_at
        assert [n.kind for n in inbox] == ["drift"]  # alerted once, not on every pass
        assert actions(app).count("drift.found") == 1
        # Someone removes it by hand: the finding closes as gone.
        fake(app).present.pop(account)
        reconcile(app.uow, app.clock, app.connectors)
        with app.uow.readonly() as uow:
            assert [f.state for f in uow.drift.list(state=None)] == ["gone"]
            assert verify_audit(uow).ok


def test_drift_remove_takes_unexplained_access_away_and_audits_it(
    kind: str, tmp_path: Path
) -> None:
    for app in app_with(kind, tmp_path, "remove"):
        grant_alice(app)
        fake(app).plant("mallory", "demo/read")
        report = reconcile(app.uow, app.clock, app.connectors)
        assert report.removed == 1
        assert not fake(app).has("mallory", "demo/read")
        assert fake(app).has("alice", "demo/read")  # the granted access stays
        with app.uow.readonly() as uow:
            assert [f.state for f in uow.drift.list(state=None)] == ["removed"]
        assert actions(app).count("drift.removed") == 1


def test_a_grant_whose_access_went_missing_is_provisioned_again(kind: str, tmp_path: Path) -> None:
    for app in app_with(kind, tmp_path, "report"):
        grant_id = grant_alice(app)
        fake(app).present.clear()  # someone deleted it in the target
        report = reconcile(app.uow, app.clock, app.connectors)
        assert report.targets[0].missing == [grant_id]
        with app.uow.readonly() as uow:
            grant = uow.grants.get(grant_id)
        assert grant is not None and grant.state is GrantState.ACTIVATING
        work(app)
        assert fake(app).has("alice", "demo/read")
        assert "drift.missing" in actions(app)
        assert reconcile(app.uow, app.clock, app.connectors).missing == 0


def test_target_health_records_failures_and_recovery(kind: str, tmp_path: Path) -> None:
    for app in app_with(kind, tmp_path, "report"):
        fake(app).failing = True
        (health,) = check_targets(app.uow, app.clock, app.connectors)
        assert (health.ok, health.error) == (False, "ConnectorError: fake target is down")
        failed = reconcile(app.uow, app.clock, app.connectors)
        assert not failed.targets[0].ok
        fake(app).failing = False
        (health,) = check_targets(app.uow, app.clock, app.connectors)
        assert health.ok and health.error is None


def test_periodic_jobs_run_once_per_interval_across_workers(kind: str, tmp_path: Path) -> None:
    for app in app_with(kind, tmp_path, "report"):
        one, two = Worker(app), Worker(app)
        try:
            assert one.run_jobs_once() == ["target-health", "reconcile"]
            assert two.run_jobs_once() == []
            clock_of(app).advance(timedelta(seconds=61))
            assert two.run_jobs_once() == ["target-health"]
            assert one.run_jobs_once() == []
            clock_of(app).advance(timedelta(seconds=300))
            assert sorted(one.run_jobs_once()) == ["reconcile", "target-health"]
        finally:
            one.shutdown()
            two.shutdown()


# --- a real PostgreSQL target -----------------------------------------------------------------
PG_POLICY = """
admins: [group:security]
users:
  alice: {groups: [engineers]}
  sam: {groups: [security]}
targets:
  db:
    type: postgres
    connection: {env: JIT_DRIFT_PG}
    drift: remove
roles:
  db/read:
    target: db
    grants: {postgres_roles: [app_readers]}
    duration: {default: 30m, max: 1h}
eligibility:
  - principals: [group:engineers]
    roles: [db/read]
"""


@pytest.mark.postgres
def test_postgres_membership_and_roles_made_by_hand_are_found_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with private_cluster() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE ROLE app_readers NOLOGIN")
            conn.execute("CREATE ROLE mallory LOGIN")
            conn.execute("GRANT app_readers TO mallory")  # behind jitaccess's back
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier("jit_eve_deadbeef")))
        monkeypatch.setenv("JIT_DRIFT_PG", dsn)
        for app in app_with_policy(tmp_path, PG_POLICY):
            granted(app, "db/read")
            report = reconcile(app.uow, app.clock, app.connectors)
            assert sorted(report.targets[0].unexplained) == ["jit_eve_deadbeef", "mallory"]
            assert sorted(report.targets[0].removed) == ["jit_eve_deadbeef", "mallory"]
            assert report.missing == 0
            assert not role_exists(dsn, "jit_eve_deadbeef")
            assert role_exists(dsn, "mallory")  # a hand-made role keeps existing...
            with psycopg.connect(dsn, autocommit=True) as conn:
                member = conn.execute(
                    "SELECT pg_has_role('mallory', 'app_readers', 'MEMBER')"
                ).fetchone()
            assert member == (False,)  # ...without the governed role
            again = reconcile(app.uow, app.clock, app.connectors)
            assert again.unexplained == 0  # alice's own grant is explained
            assert actions(app).count("drift.removed") == 2


def app_with_policy(tmp_path: Path, policy: str) -> Iterator[Container]:
    with container_on("sqlite", tmp_path, policy=policy, clock=FakeClock()) as c:
        yield c
