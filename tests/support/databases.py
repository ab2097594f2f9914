"""Containers on a real database: SQLite in a temp dir, or a scratch PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

from jitaccess.bootstrap import Container, apply_policy_files, build, upgrade
from jitaccess.clock import FakeClock
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
        yield as_url(dsn)


def as_url(dsn: str) -> str:
    """A libpq key=value DSN as the postgresql:// URL SQLAlchemy and settings expect."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return dsn
    parts = conninfo_to_dict(dsn)
    auth = quote(str(parts.get("user", "postgres")), safe="")
    if parts.get("password"):
        auth += ":" + quote(str(parts["password"]), safe="")
    host, port = parts.get("host", "127.0.0.1"), parts.get("port", 5432)
    return f"postgresql://{auth}@{host}:{port}/{parts['dbname']}"


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
