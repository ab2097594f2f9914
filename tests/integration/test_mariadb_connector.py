"""The MariaDB connector against the real shared server: logins with the issued credentials,
sessions that end at revoke, drift found and repaired, and grants that cannot smuggle SQL."""

from __future__ import annotations

import secrets
import traceback
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql  # type: ignore[import-untyped]
import pytest

from jitaccess.adapters.connectors.mariadb import MariaDBConnector, user_name
from jitaccess.adapters.connectors.registry import connector_types
from jitaccess.adapters.policy_yaml import load_policy_text
from jitaccess.domain.errors import ConnectorError, PolicyInvalid
from jitaccess.domain.policy import ConnectionRef, Target
from jitaccess.ports import Access, ExistingAccess
from support.mariadb import (
    connect,
    execute,
    is_dead,
    refuses_login,
    require_mariadb,
    role_exists,
    roles_of,
    scratch_database,
    scratch_role,
    scratch_user,
    sessions_of,
    unique,
    url_for,
    user_hosts,
)

TARGET = Target(name="it-mariadb", type="mariadb")


def make_access(grants: Mapping[str, Any], *, principal: str = "alice@example.com") -> Access:
    now = datetime.now(UTC).replace(microsecond=0)
    return Access(
        grant_id=str(uuid.uuid4()),
        principal=principal,
        role="it-mariadb/reader",
        target=TARGET.name,
        grants=grants,
        starts_at=now,
        ends_at=now + timedelta(hours=1),
    )


def one_row(url: str, query: str) -> tuple[Any, ...]:
    with closing(connect(url)) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        return tuple(cursor.fetchone())


def denied(url: str, query: str) -> bool:
    try:
        one_row(url, query)
    except pymysql.err.OperationalError as exc:
        return bool(exc.args[0] in (1142, 1044))  # table / database access denied
    return False


def entry(connector: MariaDBConnector, account: str, governed: Any = ()) -> ExistingAccess:
    found = [e for e in connector.list_access(governed) if e.account == account]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def admin() -> str:
    return require_mariadb()


@pytest.fixture
def connector(admin: str) -> Iterator[MariaDBConnector]:
    made = MariaDBConnector(TARGET, admin)
    yield made
    made.close()


@pytest.fixture
def issued(connector: MariaDBConnector) -> Iterator[list[Access]]:
    """Accesses a test provisioned; revoked afterwards whatever happened (revoke is idempotent)."""
    accesses: list[Access] = []
    yield accesses
    for access in accesses:
        connector.revoke(access)


@pytest.fixture
def database(admin: str) -> Iterator[str]:
    with scratch_database(admin) as name:
        yield name


@pytest.fixture
def reader(admin: str, database: str) -> Iterator[str]:
    """A role that may read `facts` (42) of the scratch database, and nothing else."""
    with scratch_role(admin, f"SELECT ON `{database}`.facts") as role:
        yield role


def provision(
    connector: MariaDBConnector, issued: list[Access], grants: Mapping[str, Any], **kw: str
) -> tuple[Access, dict[str, str]]:
    access = make_access(grants, **kw)
    issued.append(access)
    return access, connector.provision(access)


def test_granted_role_is_active_at_login_and_reads_only_what_it_grants(
    admin: str, connector: MariaDBConnector, issued: list[Access], database: str, reader: str
) -> None:
    _, credentials = provision(connector, issued, {"mariadb_roles": (reader,)})

    assert credentials["username"].startswith("jit_alice_example_com_")
    assert (credentials["host"], credentials["port"]) == ("127.0.0.1", "3306")
    assert "database" not in credentials
    query = f"SELECT CURRENT_ROLE(), n FROM `{database}`.facts"
    assert one_row(credentials["dsn"], query) == (reader, 42)
    assert denied(credentials["dsn"], f"SELECT s FROM `{database}`.secrets")
    assert refuses_login(url_for(admin, credentials["username"], "not-the-password"))


def test_privileges_grant_the_named_table_and_credentials_name_its_database(
    connector: MariaDBConnector, issued: list[Access], database: str
) -> None:
    grants = {"mariadb_privileges": (f"SELECT ON {database}.facts",)}
    _, credentials = provision(connector, issued, grants)

    assert credentials["database"] == database
    assert credentials["dsn"].endswith(f"/{database}")
    assert one_row(credentials["dsn"], "SELECT n FROM facts") == (42,)
    assert denied(credentials["dsn"], "SELECT s FROM secrets")


def test_a_database_wide_privilege_does_not_reach_a_lookalike_database(
    admin: str, connector: MariaDBConnector, issued: list[Access], database: str
) -> None:
    # `_` is a wildcard in database-level grants: jt_db_x would also match jtxdbxx.
    lookalike = database.replace("_", "x")
    execute(admin, f"CREATE DATABASE `{lookalike}`")
    try:
        execute(admin, f"CREATE TABLE `{lookalike}`.facts AS SELECT 7 AS n")
        grants = {"mariadb_privileges": (f"SELECT ON `{database}`.*",)}
        _, credentials = provision(connector, issued, grants)

        assert one_row(credentials["dsn"], "SELECT n FROM facts") == (42,)
        assert denied(credentials["dsn"], f"SELECT n FROM `{lookalike}`.facts")
    finally:
        execute(admin, f"DROP DATABASE `{lookalike}`")


def test_several_roles_are_all_active_at_login_and_leave_nothing_after_revoke(
    admin: str, connector: MariaDBConnector, issued: list[Access], database: str, reader: str
) -> None:
    with scratch_role(admin, f"SELECT ON `{database}`.secrets") as other:
        access, credentials = provision(connector, issued, {"mariadb_roles": (reader, other)})
        name = credentials["username"]

        query = f"SELECT f.n, s.s FROM `{database}`.facts f, `{database}`.secrets s"
        assert one_row(credentials["dsn"], query) == (42, "hidden")
        assert entry(connector, f"{name}@%").detail["member_of"] == sorted([reader, other])

        connector.revoke(access)

        assert user_hosts(admin, name) == []
        assert not role_exists(admin, f"{name}_roles")


def test_revoke_kills_open_sessions_refuses_new_logins_and_can_repeat(
    admin: str, connector: MariaDBConnector, issued: list[Access], reader: str
) -> None:
    access, credentials = provision(connector, issued, {"mariadb_roles": (reader,)})
    idle = connect(credentials["dsn"])
    unrolled = connect(credentials["dsn"])
    with unrolled.cursor() as cursor:
        cursor.execute("SET ROLE NONE")
    assert sessions_of(admin, credentials["username"]) == 2

    connector.revoke(access)

    assert is_dead(idle)
    assert is_dead(unrolled)
    assert user_hosts(admin, credentials["username"]) == []
    assert sessions_of(admin, credentials["username"]) == 0
    assert refuses_login(credentials["dsn"])
    connector.revoke(access)  # again: nothing left, still success


def test_provision_after_a_crash_midway_resets_the_password_and_grants_again(
    admin: str, connector: MariaDBConnector, issued: list[Access], database: str, reader: str
) -> None:
    access = make_access({"mariadb_roles": (reader,)})
    issued.append(access)
    name = user_name(access.principal, access.grant_id)
    # What a crash right after CREATE USER leaves behind, locked by a revoke that then died.
    execute(admin, "CREATE USER %s@'%%' IDENTIFIED BY 'before-the-crash' ACCOUNT LOCK", [name])

    first = connector.provision(access)
    second = connector.provision(access)

    assert second["username"] == first["username"] == name
    assert refuses_login(url_for(admin, name, "before-the-crash"))
    assert refuses_login(first["dsn"])
    query = f"SELECT CURRENT_ROLE(), n FROM `{database}`.facts"
    assert one_row(second["dsn"], query) == (reader, 42)
    assert user_hosts(admin, name) == ["%"]


def test_list_access_reports_the_jit_user_under_the_account_of_its_grant(
    connector: MariaDBConnector, issued: list[Access], reader: str
) -> None:
    principal = "Bob.Smith@example.com"
    access, _ = provision(connector, issued, {"mariadb_roles": (reader,)}, principal=principal)

    mine = entry(connector, connector.account_of(access))

    assert mine.account.startswith("jit_bob_smith_example_co_")  # 20 characters kept
    assert mine.account.endswith("@%")
    assert (mine.principal, mine.grant_id) == (None, None)  # a name keeps only part of them
    assert mine.detail["member_of"] == [reader]
    assert mine.detail["default_role"] == reader
    assert mine.detail["locked"] is False
    assert mine.detail["name_principal"] == "bob_smith_example_co"
    assert mine.detail["grant_suffix"] == access.grant_id.replace("-", "")[-8:]
    connector.revoke(access)
    assert mine.account not in {e.account for e in connector.list_access()}


def test_user_host_and_max_user_connections_shape_the_account(admin: str, reader: str) -> None:
    options = (("user_host", "127.0.0.1"), ("max_user_connections", 1))
    connector = MariaDBConnector(replace(TARGET, options=options), admin)
    access = make_access({"mariadb_roles": (reader,)})
    try:
        credentials = connector.provision(access)
        assert connector.account_of(access) == f"{credentials['username']}@127.0.0.1"
        assert entry(connector, connector.account_of(access)).detail["member_of"] == [reader]
        with closing(connect(credentials["dsn"])):
            with pytest.raises(pymysql.err.OperationalError) as caught:
                connect(credentials["dsn"])
            assert caught.value.args[0] == 1226  # max_user_connections exceeded
    finally:
        connector.revoke(access)
        connector.close()
    assert user_hosts(admin, credentials["username"]) == []


def test_a_hand_made_holder_of_a_governed_role_is_drift_and_loses_only_the_role(
    admin: str, connector: MariaDBConnector, database: str, reader: str
) -> None:
    password = uuid.uuid4().hex
    governed = [{"mariadb_roles": (reader,)}, {"mariadb_privileges": ("SELECT ON x.*",)}]
    with scratch_user(admin, password) as user, scratch_role(admin) as team:
        execute(admin, f"GRANT `{reader}` TO %s@'%%' WITH ADMIN OPTION", [user])
        execute(admin, f"SET DEFAULT ROLE `{reader}` FOR %s@'%%'", [user])
        execute(admin, f"GRANT `{reader}` TO `{team}`")
        login = url_for(admin, user, password)
        assert one_row(login, f"SELECT n FROM `{database}`.facts") == (42,)

        holder = entry(connector, f"{user}@%", governed)
        group = entry(connector, team, governed)
        assert holder.detail["member_of"] == group.detail["member_of"] == [reader]
        assert (holder.detail["kind"], group.detail["kind"]) == ("user", "role")
        assert holder.detail["hand_made"] is group.detail["hand_made"] is True
        assert (holder.detail["admin_option"], group.detail["admin_option"]) == ([reader], [])
        accounts = {e.account for e in connector.list_access()}  # nothing governed: not listed
        assert f"{user}@%" not in accounts
        assert team not in accounts
        admin_user = one_row(admin, "SELECT CURRENT_USER()")[0]  # it created (so holds) reader
        assert admin_user not in {e.account for e in connector.list_access(governed)}

        connector.remove(holder)
        connector.remove(group)
        connector.remove(holder)  # again: nothing left to take, still success

        assert roles_of(admin, user, "%") == []
        assert roles_of(admin, team, "") == []
        assert user_hosts(admin, user) == ["%"]
        assert one_row(login, "SELECT CURRENT_ROLE()") == (None,)
        assert denied(login, f"SELECT n FROM `{database}`.facts")
        left = {e.account for e in connector.list_access(governed)}
        assert not {f"{user}@%", team} & left


def test_remove_drops_a_jit_user_no_grant_explains_and_kills_its_sessions(
    admin: str, connector: MariaDBConnector, issued: list[Access], reader: str
) -> None:
    access, credentials = provision(connector, issued, {"mariadb_roles": (reader,)})
    session = connect(credentials["dsn"])
    found = entry(connector, connector.account_of(access), [{"mariadb_roles": (reader,)}])

    connector.remove(found)

    assert is_dead(session)
    assert user_hosts(admin, credentials["username"]) == []
    assert refuses_login(credentials["dsn"])


@pytest.mark.parametrize(
    ("grants", "key"),
    [
        ({"mariadb_privileges": ("SELECT ON app.*; DROP DATABASE x",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": ("SELECT ON app.* TO evil@'%'",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": ("SELECT ON `app`.*`; DROP DATABASE x",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": ("SELECT ON app.t", "SELECT ON *.*")}, "mariadb_privileges[1]"),
        ({"mariadb_privileges": ("SELECT (id) ON app.t",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": ("SELECT, GRANT OPTION ON app.*",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": ("SELECT ON mysql.global_priv",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": ("SUPER ON app.*",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": ("EXECUTE ON app.t",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": ("ALL, SELECT ON app.*",)}, "mariadb_privileges[0]"),
        ({"mariadb_privileges": "SELECT ON app.*"}, "mariadb_privileges"),
        ({"mariadb_roles": ("app_ro`; DROP DATABASE x; -- ",)}, "mariadb_roles[0]"),
        ({"mariadb_roles": ("app_ro\n",)}, "mariadb_roles[0]"),
        ({"mariadb_roles": ("ok", "jit_bob_12345678")}, "mariadb_roles[1]"),
        ({"mariadb_roles": (3,)}, "mariadb_roles[0]"),
        ({"mariadb_roles": ("NONE",)}, "mariadb_roles[0]"),
        ({"mariadb_roles": ()}, "mariadb_roles"),
        ({"mariadb_roles": "app_ro"}, "mariadb_roles"),
        ({"mariadb_roles": ("app_ro",), "postgres_roles": ("x",)}, "postgres_roles"),
        ({}, ""),
    ],
)
def test_grant_problems_refuse_what_could_smuggle_or_widen_sql(
    grants: dict[str, Any], key: str
) -> None:
    assert key in [found for found, _reason in MariaDBConnector.grant_problems(grants)]


def test_grant_problems_accept_roles_and_privileges_on_databases_and_tables() -> None:
    grants = {
        "mariadb_roles": ("app_ro", "reports$2"),
        "mariadb_privileges": (
            "SELECT ON app.*",
            "select, insert ON `app`.`orders`",
            "ALL PRIVILEGES ON app.*",
            "CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE ON app.*",
        ),
    }
    assert MariaDBConnector.grant_problems(grants) == []
    assert connector_types()["mariadb"] is MariaDBConnector


def test_the_policy_loader_refuses_bad_mariadb_grants_by_key() -> None:
    text = (
        "users:\n  alice: {groups: [dba]}\n"
        "targets:\n  db: {type: mariadb, connection: {env: DB}}\n"
        "roles:\n  r:\n    target: db\n"
        "    grants: {mariadb_privileges: ['SELECT ON app.*; DROP DATABASE x']}\n"
    )
    with pytest.raises(PolicyInvalid) as caught:
        load_policy_text(text)
    keys = [problem.key for problem in caught.value.problems]
    assert keys == ["roles.r.grants.mariadb_privileges[0]"]


def test_provision_refuses_invalid_grants_before_touching_the_server(
    admin: str, connector: MariaDBConnector
) -> None:
    access = make_access({"mariadb_roles": ("x`; DROP USER root; --",)})
    with pytest.raises(ConnectorError, match="not valid"):
        connector.provision(access)
    assert user_hosts(admin, user_name(access.principal, access.grant_id)) == []


def test_unknown_role_or_table_is_refused_by_name_and_nothing_is_created(
    admin: str, connector: MariaDBConnector, database: str
) -> None:
    missing_role = unique("no_such_role")
    for grants, missing in [
        ({"mariadb_roles": (missing_role,)}, missing_role),
        ({"mariadb_privileges": (f"SELECT ON {database}.nowhere",)}, f"{database}.nowhere"),
    ]:
        access = make_access(grants)
        with pytest.raises(ConnectorError, match=missing):
            connector.provision(access)
        assert user_hosts(admin, user_name(access.principal, access.grant_id)) == []


def test_errors_never_show_the_admin_password(admin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = unique("hunter2")
    monkeypatch.setenv("JIT_TEST_MARIADB_URL", url_for(admin, "root", secret))
    connector = MariaDBConnector.from_target(
        replace(TARGET, connection=ConnectionRef(env="JIT_TEST_MARIADB_URL"))
    )
    try:
        for operation in (connector.check, lambda: connector.provision(make_access({}))):
            with pytest.raises(ConnectorError) as caught:
                operation()
            assert secret not in "".join(traceback.format_exception(caught.value))
        with pytest.raises(ConnectorError, match="Access denied") as caught:
            connector.check()
        assert str(caught.value).startswith("mariadb target it-mariadb: ")
    finally:
        connector.close()
    for bad in (
        f"mysql://root:{secret}@127.0.0.1:notaport/",
        f"postgresql://root:{secret}@127.0.0.1/",
        f"mysql://root:{secret}@127.0.0.1/?password={secret}",
        f"mysql://:{secret}@127.0.0.1/",
    ):
        with pytest.raises(ConnectorError) as caught:
            MariaDBConnector(TARGET, bad)
        assert secret not in "".join(traceback.format_exception(caught.value))


def test_a_provision_failing_midway_never_shows_the_new_password(
    admin: str, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued_password = unique("issued-password")
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _size: issued_password)
    admin_password = uuid.uuid4().hex
    access = make_access({"mariadb_roles": (reader,)})
    with scratch_user(admin, admin_password) as user:
        # Rights enough to make users, not to hand out `reader` (no ADMIN OPTION on it).
        grant = "GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO %s@'%%'"
        execute(admin, grant, [user])
        execute(admin, "GRANT SELECT ON mysql.* TO %s@'%%'", [user])
        weak = MariaDBConnector(TARGET, url_for(admin, user, admin_password))
        try:
            with pytest.raises(ConnectorError, match="Access denied") as caught:
                weak.provision(access)
            shown = "".join(traceback.format_exception(caught.value))
            assert issued_password not in shown
            assert admin_password not in shown
            weak.revoke(access)  # what the failed provision left is cleaned up
        finally:
            weak.close()
    assert user_hosts(admin, user_name(access.principal, access.grant_id)) == []


def test_credentials_name_the_host_clients_should_use(admin: str, reader: str) -> None:
    target = replace(TARGET, options=(("host_for_clients", "db.internal.example"),))
    connector = MariaDBConnector(target, admin)
    try:
        access = make_access({"mariadb_roles": (reader,)})
        credentials = connector.provision(access)
        assert credentials["host"] == "db.internal.example"
        assert credentials["dsn"].startswith(f"mysql://{credentials['username']}:")
        assert credentials["dsn"].endswith("@db.internal.example:3306/")
        connector.revoke(access)
    finally:
        connector.close()


def test_admin_connection_comes_from_an_env_variable_or_a_file(
    admin: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    variable = unique("JIT_TEST_MARIADB").upper()
    monkeypatch.delenv(variable, raising=False)
    from_env = replace(TARGET, connection=ConnectionRef(env=variable))
    with pytest.raises(ConnectorError, match=variable):
        MariaDBConnector.from_target(from_env)
    path = tmp_path / "admin.url"
    path.write_text(admin + "\n")
    connector = MariaDBConnector.from_target(
        replace(TARGET, connection=ConnectionRef(file=str(path)))
    )
    try:
        connector.check()
    finally:
        connector.close()


def test_bad_options_are_refused_by_name(admin: str) -> None:
    for options, named in [
        ((("user_host", "%' OR '1'='1"),), "user_host"),
        ((("max_user_connections", "ten"),), "max_user_connections"),
        ((("user_hosts", "%"),), "user_hosts"),
    ]:
        with pytest.raises(ConnectorError, match=named):
            MariaDBConnector(replace(TARGET, options=options), admin)


def test_check_passes_for_root_and_fails_for_an_admin_without_rights(
    admin: str, connector: MariaDBConnector
) -> None:
    connector.check()
    password = "p@ss:w/rd%?#" + uuid.uuid4().hex  # percent-decoded from the URL
    with scratch_user(admin, password) as user:
        execute(admin, "GRANT SELECT ON mysql.* TO %s@'%%'", [user])
        weak = MariaDBConnector(TARGET, url_for(admin, user, password))
        try:
            with pytest.raises(ConnectorError, match="CREATE USER, PROCESS") as caught:
                weak.check()
            assert password not in str(caught.value)
            grant = "GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO %s@'%%'"
            execute(admin, grant, [user])
            weak.check()
        finally:
            weak.close()


def test_extend_keeps_access_as_it_is(
    connector: MariaDBConnector, issued: list[Access], database: str, reader: str
) -> None:
    access, credentials = provision(connector, issued, {"mariadb_roles": (reader,)})

    connector.extend(replace(access, ends_at=access.ends_at + timedelta(hours=2)))

    assert one_row(credentials["dsn"], f"SELECT n FROM `{database}`.facts") == (42,)


def test_worker_threads_can_provision_and_revoke_at_once(
    admin: str, connector: MariaDBConnector, reader: str
) -> None:
    accesses = [make_access({"mariadb_roles": (reader,)}, principal=f"u{n}") for n in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        credentials = list(pool.map(connector.provision, accesses))
        for granted in credentials:
            connect(granted["dsn"]).close()
        list(pool.map(connector.revoke, accesses))
    assert not [c for c in credentials if user_hosts(admin, c["username"])]


def test_pooled_connections_killed_by_the_server_are_replaced(admin: str) -> None:
    password = uuid.uuid4().hex
    with scratch_user(admin, password) as user:
        execute(admin, "GRANT ALL PRIVILEGES ON *.* TO %s@'%%' WITH GRANT OPTION", [user])
        connector = MariaDBConnector(TARGET, url_for(admin, user, password))
        try:
            with ThreadPoolExecutor(max_workers=3) as pool:
                list(pool.map(lambda _: connector.list_access(), range(6)))
            threads = execute(
                admin, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", [user]
            )
            assert threads
            for (thread,) in threads:
                execute(admin, f"KILL CONNECTION {int(thread)}")

            connector.check()
        finally:
            connector.close()
