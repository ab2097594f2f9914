"""Containers on a real database: SQLite in a temp dir, or a scratch PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from jitaccess.adapters.db.unit_of_work import libpq_dsn_to_url
from jitaccess.bootstrap import Container, apply_policy_files, build, upgrade
from jitaccess.clock import FakeClock
from jitaccess.domain.model import Request
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkerOptions, run_due_work
from jitaccess.settings import Settings
from support.postgres import require_postgres, scratch_database

POLICY = """
admins: [group:security]
auditors: [user:erin]
users:
  alice: {groups: [engineers]}
  bob: {groups: [dba]}
  dan: {groups: [dba]}
  sam: {groups: [security]}
  erin: {groups: [audit]}
targets:
  demo: {type: fake}
roles:
  demo/read:
    target: demo
    grants: {scope: read}
    duration: {default: 10m, max: 1h, min: 1s}
  demo/admin:
    target: demo
    grants: {scope: admin}
    duration: {default: 30m, max: 4h}
    require: {justification: true}
    approval:
      pending_ttl: 1h
      stages:
        - name: dba
          approvers: [group:dba]
eligibility:
  - principals: [group:engineers]
    roles: [demo/read, demo/admin]
"""


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'jitaccess.db'}"
        return
    require_postgres()
    with scratch_database("jit_store") as dsn:
        yield libpq_dsn_to_url(dsn)


@contextmanager
def container_on(
    kind: str, tmp_path: Path, *, policy: str = POLICY, clock: FakeClock | None = None
) -> Iterator[Container]:
    with database_url(kind, tmp_path) as url:
        settings = Settings(data_dir=tmp_path, database_url=url, run_worker=False)
        container = build(settings, clock=clock or FakeClock())
        try:
            upgrade(container)
            policy_file = tmp_path / "policy.yaml"
            policy_file.write_text(policy)
            apply_policy_files(container, [str(policy_file)], actor="test")
            yield container
        finally:
            container.close()


def work(app: Container) -> None:
    """One worker pass, without jitter."""
    run_due_work(app.uow, app.clock, app.connectors, app.box, WorkerOptions(jitter=lambda: 1.0))


def granted(app: Container, role: str, who: str = "alice") -> Request:
    """`who` asks for `role` (one that needs no approval) for 30 minutes; a worker pass
    provisions it."""
    with app.uow() as uow:
        request = request_access(
            uow,
            app.clock,
            app.connectors,
            requester=who,
            roles=[role],
            duration=timedelta(minutes=30),
            justification="drift test",
        )
    assert isinstance(request, Request)
    work(app)
    return request
