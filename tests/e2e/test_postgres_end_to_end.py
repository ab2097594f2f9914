"""End to end: `jitaccess serve` as a process, the CLI as a user, a real PostgreSQL target that
checks passwords. Access appears on approval and disappears on time, live sessions included."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jitaccess.adapters.connectors.postgres import login_role_name
from support.postgres import private_cluster, role_exists
from support.processes import base_env, cli, cli_json, running_server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@dataclass
class Target:
    admin_dsn: str
    group_role: str


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with private_cluster() as dsn:
        group_role = f"readers_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group_role)))
            conn.execute("CREATE TABLE incidents (id int, title text)")
            conn.execute("INSERT INTO incidents VALUES (1, 'disk full')")
            conn.execute(
                sql.SQL("GRANT SELECT ON incidents TO {}").format(sql.Identifier(group_role))
            )
        yield Target(dsn, group_role)


def _policy(path: Path, group_role: str, *, approval: bool) -> Path:
    stage = (
        "    approval:\n      stages:\n        - name: dba\n          approvers: [group:dba]\n"
        if approval
        else ""
    )
    path.write_text(
        "admins: [group:security]\n"
        "users:\n  alice: {groups: [engineers]}\n  bob: {groups: [dba]}\n"
        "  sam: {groups: [security]}\n"
        "targets:\n  pg:\n    type: postgres\n    connection: {env: E2E_PG_ADMIN}\n"
        "roles:\n  pg/read:\n    target: pg\n"
        f"    grants: {{postgres_roles: [{group_role}]}}\n"
        "    duration: {default: 5s, max: 1h, min: 1s}\n"
        + stage
        + "eligibility:\n  - principals: [group:engineers]\n    roles: [pg/read]\n"
    )
    return path


def _token(env: dict[str, str], who: str) -> str:
    token: str = cli_json(env, "token", "create", "--principal", who)["token"]
    return token


def _grant(env: dict[str, str], url: str, token: str, grant_id: str) -> dict[str, object]:
    for grant in cli_json(env, "grants", token=token, url=url):
        if grant["id"] == grant_id:
            return dict(grant)
    raise AssertionError(f"grant {grant_id} not listed")


def test_request_approve_login_and_session_ends_with_the_grant(
    target: Target, tmp_path: Path
) -> None:
    env = base_env(tmp_path, E2E_PG_ADMIN=target.admin_dsn)
    policy = _policy(tmp_path / "policy.yaml", target.group_role, approval=True)
    cli(env, "policy", "apply", str(policy))
    alice, bob = _token(env, "alice"), _token(env, "bob")
    with running_server(env, policy, tmp_path / "server.log") as server:
        request = cli_json(
            env,
            "request",
            "pg/read",
            "--for",
            "6s",
            "--reason",
            "INC-7 triage",
            token=alice,
            url=server.url,
        )
        assert request["state"] == "pending"
        # alice cannot approve her own request: refused with a meaningful exit code
        refused = cli(env, "approve", request["id"], token=alice, url=server.url, check=False)
        assert refused.returncode == 3 and "self-approval" in refused.stderr
        approved = cli_json(env, "approve", request["id"], "-m", "ok", token=bob, url=server.url)
        assert approved["state"] == "approved"
        grant_id = approved["grants"][0]
        wait_for(
            lambda: _grant(env, server.url, alice, grant_id)["state"] == "active",
            20,
            "the grant to become active",
        )
        creds = cli_json(env, "credentials", grant_id, token=alice, url=server.url)
        again = cli(env, "credentials", grant_id, token=alice, url=server.url, check=False)
        assert again.returncode == 5  # handed out once
        stolen = cli(env, "credentials", grant_id, token=bob, url=server.url, check=False)
        assert stolen.returncode == 4  # someone else's grant looks missing

        session = psycopg.connect(creds["dsn"], autocommit=True)
        with_set_role = psycopg.connect(creds["dsn"], autocommit=True)
        with_set_role.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(target.group_role)))
        assert session.execute("SELECT title FROM incidents").fetchone() == ("disk full",)

        ends_at = _ends_at(_grant(env, server.url, alice, grant_id))
        assert ends_at > datetime.now(UTC)

        def session_gone(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError:
                return True
            return False

        wait_for(
            lambda: session_gone(session) and session_gone(with_set_role),
            30,
            "the open sessions to be terminated",
        )
        wait_for(
            lambda: _grant(env, server.url, alice, grant_id)["state"] == "expired",
            10,
            "the grant to be marked expired",
        )
        ended = _grant(env, server.url, alice, grant_id)
        ended_at = datetime.fromisoformat(str(ended["ended_at"]).replace("Z", "+00:00"))
        assert ended_at >= ends_at
        assert not role_exists(target.admin_dsn, creds["username"])
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(creds["dsn"], connect_timeout=5).close()
        verify = cli(env, "audit", "verify", token=bob, url=server.url, check=False)
        assert verify.returncode == 3  # bob is not an auditor
        assert cli(env, "audit", "verify", "--db").returncode == 0
        # Secrets never reach the log or the audit trail: not the grant's password, not the
        # target's admin password, not the API tokens.
        trail = cli(env, "audit", "export", "--format", "jsonl", "--db").stdout
        log = (tmp_path / "server.log").read_text()
        admin_password = str(conninfo_to_dict(target.admin_dsn)["password"])
        for secret in (creds["password"], admin_password, alice, bob):
            assert secret not in trail and secret not in log
        assert "grant.credentials_fetched" in trail


def test_grants_due_while_the_server_was_killed_are_revoked_after_restart(
    target: Target, tmp_path: Path
) -> None:
    env = base_env(tmp_path, E2E_PG_ADMIN=target.admin_dsn)
    policy = _policy(tmp_path / "policy.yaml", target.group_role, approval=False)
    cli(env, "policy", "apply", str(policy))
    alice = _token(env, "alice")
    with running_server(env, policy, tmp_path / "server.log") as server:
        ids = [
            cli_json(
                env,
                "request",
                "pg/read",
                "--for",
                "10s",
                "--reason",
                "batch job",
                token=alice,
                url=server.url,
            )["grants"][0]
            for _ in range(5)
        ]
        wait_for(
            lambda: all(_grant(env, server.url, alice, g)["state"] == "active" for g in ids),
            20,
            "the grants to become active",
        )
        accounts = {g: login_role_name("alice", g) for g in ids}
        assert all(role_exists(target.admin_dsn, name) for name in accounts.values())
        last_end = max(_ends_at(_grant(env, server.url, alice, g)) for g in ids)
        server.kill()
        # Past every end while no worker runs: the accounts are still there.
        wait_for(lambda: datetime.now(UTC) > last_end, 20, "the grants to be overdue")
        assert all(role_exists(target.admin_dsn, name) for name in accounts.values())
        server.start()
        wait_for(
            lambda: not any(role_exists(target.admin_dsn, n) for n in accounts.values()),
            30,
            "the overdue roles to be dropped",
        )
        wait_for(
            lambda: all(_grant(env, server.url, alice, g)["state"] == "expired" for g in ids),
            10,
            "the grants to be marked expired",
        )
    assert cli(env, "audit", "verify", "--db").returncode == 0


def _ends_at(grant: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(grant["ends_at"]).replace("Z", "+00:00"))
