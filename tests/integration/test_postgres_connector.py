"""The PostgreSQL connector against real servers: a private password-checking cluster for anything
about logins, the shared server for the rest."""

from __future__ import annotations

import base64
import secrets
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jitaccess.adapters.connectors.postgres import PostgresConnector
from jitaccess.adapters.connectors.scram import Verifiers, scram_sha256_verifier
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import ConnectionRef, Target
from jitaccess.ports import Access
from support.postgres import (
    backends_of,
    private_cluster,
    require_postgres,
    role_exists,
    scratch_database,
    with_database,
)

pytestmark = pytest.mark.postgres

TARGET = Target(name="it-db", type="postgres")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def execute(
    dsn: str, statement: str | sql.SQL | sql.Composed, params: Sequence[object] = ()
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


def fetch_one(dsn: str, query: str, params: Sequence[object] = ()) -> tuple[object, ...] | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()


def make_access(roles: Sequence[str], *, principal: str = "alice@example.com") -> Access:
    now = datetime.now(UTC).replace(microsecond=0)
    return Access(
        grant_id=str(uuid.uuid4()),
        principal=principal,
        role="it-db/readonly",
        target=TARGET.name,
        grants={"postgres_roles": list(roles)},
        starts_at=now,
        ends_at=now + timedelta(hours=1),
    )


def refuses_login(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError:
        return True
    return False


def database_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def with_password(dsn: str, password: str) -> str:
    return make_conninfo(dsn, password=password)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with private_cluster() as dsn:
        yield dsn


@pytest.fixture
def shared() -> str:
    return require_postgres()


@pytest.fixture
def connector(cluster: str) -> Iterator[PostgresConnector]:
    made = PostgresConnector(TARGET, cluster)
    yield made
    made.close()


@pytest.fixture
def issued(connector: PostgresConnector) -> Iterator[list[Access]]:
    """Accesses a test provisioned; revoked afterwards whatever happened (revoke is idempotent)."""
    accesses: list[Access] = []
    yield accesses
    for access in accesses:
        connector.revoke(access)


@pytest.fixture
def readonly(cluster: str) -> Iterator[str]:
    """A group role that may read one table, `<role>_facts`, holding the number 42."""
    role = unique("readonly")
    role_id, table = sql.Identifier(role), sql.Identifier(f"{role}_facts")
    execute(cluster, sql.SQL("CREATE ROLE {} NOLOGIN").format(role_id))
    execute(cluster, sql.SQL("CREATE TABLE {} AS SELECT 42 AS n").format(table))
    execute(cluster, sql.SQL("GRANT SELECT ON {} TO {}").format(table, role_id))
    yield role
    execute(cluster, sql.SQL("DROP TABLE {}").format(table))
    execute(cluster, sql.SQL("DROP OWNED BY {}").format(role_id))
    execute(cluster, sql.SQL("DROP ROLE {}").format(role_id))


Provision = Callable[..., tuple[Access, dict[str, str]]]


@pytest.fixture
def provision(connector: PostgresConnector, issued: list[Access], readonly: str) -> Provision:
    def provision_readonly(principal: str = "alice@example.com") -> tuple[Access, dict[str, str]]:
        access = make_access([readonly], principal=principal)
        issued.append(access)
        return access, connector.provision(access)

    return provision_readonly


def test_provisioned_role_logs_in_with_its_password_and_reads_through_membership(
    cluster: str, provision: Provision, readonly: str
) -> None:
    access, credentials = provision()

    admin = conninfo_to_dict(cluster)
    assert credentials["host"] == admin["host"]
    assert credentials["port"] == admin["port"]
    assert credentials["dbname"] == "postgres"
    with psycopg.connect(credentials["dsn"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (credentials["username"],)
        query = sql.SQL("SELECT n FROM {}").format(sql.Identifier(f"{readonly}_facts"))
        assert conn.execute(query).fetchone() == (42,)
    assert refuses_login(with_password(credentials["dsn"], "not-the-password"))
    valid_until = fetch_one(
        cluster, "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", [credentials["username"]]
    )
    assert valid_until == (access.ends_at,)


def test_provision_twice_keeps_one_role_and_only_the_latest_password_works(
    cluster: str, connector: PostgresConnector, provision: Provision
) -> None:
    access, first = provision()

    second = connector.provision(access)

    assert second["username"] == first["username"]
    assert second["password"] != first["password"]
    assert refuses_login(first["dsn"])
    psycopg.connect(second["dsn"]).close()
    mine = [found for found in connector.list_access() if found.grant_id == access.grant_id]
    assert [found.account for found in mine] == [first["username"]]


def test_revoke_ends_open_sessions_even_after_set_role_and_refuses_new_logins(
    cluster: str, connector: PostgresConnector, provision: Provision, readonly: str
) -> None:
    access, credentials = provision()
    with scratch_database(admin_dsn=cluster) as other_db:
        plain = psycopg.connect(credentials["dsn"], autocommit=True)
        switched = psycopg.connect(credentials["dsn"], autocommit=True)
        switched.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(readonly)))
        elsewhere = psycopg.connect(
            with_database(credentials["dsn"], database_of(other_db)),
            autocommit=True,
        )
        sessions = [plain, switched, elsewhere]
        assert backends_of(cluster, credentials["username"]) == 3

        connector.revoke(access)

        for session in sessions:
            with pytest.raises(psycopg.OperationalError):
                session.execute("SELECT 1")
            session.close()
    assert not role_exists(cluster, credentials["username"])
    assert backends_of(cluster, credentials["username"]) == 0
    assert refuses_login(credentials["dsn"])
    connector.revoke(access)  # again: nothing left, still success


def test_revoke_hands_objects_the_grantee_created_to_the_admin_in_every_database(
    cluster: str, connector: PostgresConnector, provision: Provision, readonly: str
) -> None:
    access, credentials = provision()
    with scratch_database(admin_dsn=cluster) as work_db:
        execute(work_db, "CREATE SCHEMA work")
        grant = sql.SQL("GRANT USAGE, CREATE ON SCHEMA work TO {}")
        execute(work_db, grant.format(sql.Identifier(readonly)))
        grantee_dsn = with_database(credentials["dsn"], database_of(work_db))
        with psycopg.connect(grantee_dsn, autocommit=True) as grantee:
            grantee.execute("CREATE TABLE work.notes AS SELECT 'kept' AS note")
            # A default-privileges entry blocks DROP ROLE too, and REASSIGN leaves it behind.
            default_acl = sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA work GRANT SELECT ON TABLES TO {}"
            )
            grantee.execute(default_acl.format(sql.Identifier(readonly)))

        connector.revoke(access)

        owner = fetch_one(
            work_db,
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'work' AND tablename = 'notes'",
        )
        assert owner == ("postgres",)
        assert fetch_one(work_db, "SELECT note FROM work.notes") == ("kept",)
        assert fetch_one(work_db, "SELECT count(*) FROM pg_default_acl") == (0,)
    assert not role_exists(cluster, credentials["username"])


def test_revoke_of_a_role_that_never_existed_succeeds(shared: str) -> None:
    connector = PostgresConnector(TARGET, shared)
    try:
        access = make_access(["pg_monitor"])
        connector.revoke(access)
        connector.revoke(access)
    finally:
        connector.close()


def test_list_access_maps_the_role_back_to_grant_and_principal(
    connector: PostgresConnector, provision: Provision, readonly: str
) -> None:
    access, credentials = provision(principal="Bob.Smith@example.com")

    found = {existing.account: existing for existing in connector.list_access()}

    mine = found[credentials["username"]]
    assert credentials["username"].startswith("jit_bob_smith_example")
    assert (mine.grant_id, mine.principal) == (access.grant_id, "Bob.Smith@example.com")
    assert mine.detail["member_of"] == [readonly]
    assert mine.detail["can_login"] is True
    assert mine.detail["valid_until"] == access.ends_at
    connector.revoke(access)
    assert credentials["username"] not in {e.account for e in connector.list_access()}


def test_unknown_postgres_role_is_refused_by_name_and_nothing_is_created(shared: str) -> None:
    missing = unique("no_such_role")
    access = make_access(["pg_monitor", missing])
    connector = PostgresConnector(TARGET, shared)
    try:
        with pytest.raises(ConnectorError, match=missing):
            connector.provision(access)
        assert not [e for e in connector.list_access() if e.grant_id == access.grant_id]
    finally:
        connector.close()


def test_missing_or_unusable_admin_connection_is_named_without_its_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    variable = unique("JIT_TEST_ADMIN_DSN").upper()
    monkeypatch.delenv(variable, raising=False)
    target = replace(TARGET, connection=ConnectionRef(env=variable))
    with pytest.raises(ConnectorError, match=variable):
        PostgresConnector.from_target(target)

    monkeypatch.setenv(variable, "host=db password=hunter2-secret 'unterminated")
    with pytest.raises(ConnectorError) as caught:
        PostgresConnector.from_target(target)
    assert "hunter2-secret" not in "".join(traceback.format_exception(caught.value))

    absent = tmp_path / "admin.dsn"
    with pytest.raises(ConnectorError, match=str(absent)):
        PostgresConnector.from_target(replace(TARGET, connection=ConnectionRef(file=str(absent))))


def test_admin_connection_can_come_from_a_file(cluster: str, tmp_path: Path) -> None:
    path = tmp_path / "admin.dsn"
    path.write_text(cluster + "\n")
    connector = PostgresConnector.from_target(
        replace(TARGET, connection=ConnectionRef(file=str(path)))
    )
    try:
        connector.check()
    finally:
        connector.close()


def test_check_passes_for_the_admin_and_fails_without_createrole(shared: str) -> None:
    admin = PostgresConnector(TARGET, shared)
    plain_role = unique("plain")
    execute(shared, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(plain_role)))
    plain = PostgresConnector(TARGET, make_conninfo(shared, user=plain_role))
    try:
        admin.check()
        with pytest.raises(ConnectorError, match="CREATEROLE"):
            plain.check()
    finally:
        admin.close()
        plain.close()
        execute(shared, sql.SQL("DROP ROLE {}").format(sql.Identifier(plain_role)))


def test_errors_never_show_the_admin_password(
    cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_password = str(conninfo_to_dict(cluster)["password"])
    wrong_password = unique("wrong-password")
    monkeypatch.setenv("JIT_TEST_WRONG_DSN", with_password(cluster, wrong_password))
    connector = PostgresConnector.from_target(
        replace(TARGET, connection=ConnectionRef(env="JIT_TEST_WRONG_DSN"))
    )
    try:
        for operation in (connector.check, lambda: connector.provision(make_access([]))):
            with pytest.raises(ConnectorError) as caught:
                operation()
            shown = "".join(traceback.format_exception(caught.value))
            assert "password authentication failed" in str(caught.value)
            assert wrong_password not in shown
            assert real_password not in shown
    finally:
        connector.close()


def test_extend_moves_valid_until_and_a_missing_role_cannot_be_extended(
    cluster: str, connector: PostgresConnector, provision: Provision
) -> None:
    access, credentials = provision()
    later = replace(access, ends_at=access.ends_at + timedelta(hours=2))

    connector.extend(later)

    row = fetch_one(
        cluster, "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", [credentials["username"]]
    )
    assert row == (later.ends_at,)
    with pytest.raises(ConnectorError, match="missing"):
        connector.extend(make_access([]))


def test_a_createrole_admin_that_is_not_superuser_can_provision_and_revoke(
    cluster: str, readonly: str
) -> None:
    admin_role, admin_password = unique("jitadmin"), uuid.uuid4().hex
    create = sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}")
    execute(cluster, create.format(sql.Identifier(admin_role), sql.Literal(admin_password)))
    connector = PostgresConnector(
        TARGET, make_conninfo(cluster, user=admin_role, password=admin_password)
    )
    access = make_access([readonly])
    try:
        with scratch_database(admin_dsn=cluster) as work_db:
            execute(work_db, "CREATE SCHEMA work")
            schema_grant = sql.SQL("GRANT USAGE, CREATE ON SCHEMA work TO {}")
            execute(work_db, schema_grant.format(sql.Identifier(readonly)))
            connector.check()
            credentials = connector.provision(access)
            grantee_dsn = with_database(credentials["dsn"], database_of(work_db))
            session = psycopg.connect(grantee_dsn, autocommit=True)
            session.execute("CREATE TABLE work.notes AS SELECT 'kept' AS note")

            connector.revoke(access)

            with pytest.raises(psycopg.OperationalError):
                session.execute("SELECT 1")
            session.close()
            owner = fetch_one(work_db, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'")
            assert owner == (admin_role,)
        assert not role_exists(cluster, credentials["username"])
    finally:
        connector.close()
        execute(cluster, sql.SQL("DROP ROLE {}").format(sql.Identifier(admin_role)))


def test_worker_threads_can_provision_and_revoke_at_once(
    cluster: str, connector: PostgresConnector, readonly: str
) -> None:
    accesses = [make_access([readonly], principal=f"user{n}") for n in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        credentials = list(pool.map(connector.provision, accesses))
        for granted in credentials:
            psycopg.connect(granted["dsn"]).close()
        list(pool.map(connector.revoke, accesses))
    assert not [c for c in credentials if role_exists(cluster, c["username"])]


def test_a_pooled_connection_killed_by_the_server_is_replaced(
    cluster: str, connector: PostgresConnector
) -> None:
    connector.check()
    execute(
        cluster,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'jitaccess' AND pid <> pg_backend_pid()",
    )

    connector.check()


def test_verifiers_are_those_libpq_makes(shared: str) -> None:
    # scram.py makes what libpq's PQencryptPasswordConn makes: same salt and count, same
    # verifier (logins with the connector's passwords are tested above, on a cluster that
    # checks them).
    with psycopg.connect(shared) as conn:
        for password in ("pencil", secrets.token_urlsafe(24)):
            made = conn.pgconn.encrypt_password(password.encode(), b"u", b"scram-sha-256")
            method, rest = made.decode().split("$", 1)
            iterations, salt = rest.split("$")[0].split(":")
            assert method == "SCRAM-SHA-256"
            ours = scram_sha256_verifier(
                password, salt=base64.b64decode(salt), iterations=int(iterations)
            )
            assert ours == made.decode()


def test_verifiers_are_made_ahead_and_handed_out_once() -> None:
    verifiers = Verifiers(ahead=2)
    taken = [verifiers.take() for _ in range(6)]  # more than are made ahead: made on demand
    assert len({password for password, _ in taken}) == 6
    for password, verifier in taken:
        salt = base64.b64decode(verifier.split("$")[1].split(":")[1])
        assert scram_sha256_verifier(password, salt=salt) == verifier
    with pytest.raises(ValueError, match="printable ASCII"):
        scram_sha256_verifier("pässword")
