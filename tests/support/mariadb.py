"""Real MariaDB for tests: the shared server, and scratch databases, roles and users on it, each
uniquely named and dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import quote, unquote, urlsplit

import pymysql  # type: ignore[import-untyped]
import pytest

ADMIN_URL = os.environ.get("JITACCESS_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/")
# Names the connector's drift scan never mistakes for its own `jit_` users.
PREFIX = "jt"
DRIVER_ERRORS = (pymysql.err.OperationalError, pymysql.err.InterfaceError)


def _unavailable(reason: str) -> NoReturn:
    """CI must run the MariaDB suite, so there a missing server fails; locally it skips."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def unique(prefix: str) -> str:
    return f"{PREFIX}_{prefix}_{uuid.uuid4().hex[:10]}"


def connect(url: str, **overrides: Any) -> Any:
    """A pymysql connection to `mysql://USER:PASSWORD@HOST:PORT/[DB]` (autocommit)."""
    parts = urlsplit(url)
    params: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")) or None,
        "autocommit": True,
        "connect_timeout": 5,
    }
    return pymysql.connect(**(params | overrides))


def require_mariadb(url: str = ADMIN_URL) -> str:
    parts = urlsplit(url)  # never show the password
    try:
        connect(url).close()
    except pymysql.err.MySQLError as exc:
        reason = str(exc.args[-1]) if exc.args else type(exc).__name__
        _unavailable(f"MariaDB not reachable at {parts.hostname}:{parts.port or 3306}: {reason}")
    return url


def execute(url: str, statement: str, args: Sequence[object] | None = None) -> list[Any]:
    conn = connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement, args)
            return list(cursor.fetchall())
    finally:
        conn.close()


def url_for(url: str, user: str, password: str, database: str | None = None) -> str:
    """`url` with another user (and database); credentials percent-encoded."""
    parts = urlsplit(url)
    login = f"{quote(user, safe='')}:{quote(password, safe='')}"
    host = f"{parts.hostname}:{parts.port or 3306}"
    return f"mysql://{login}@{host}/{quote(database or '', safe='')}"


def user_hosts(url: str, user: str) -> list[str]:
    rows = execute(url, "SELECT Host FROM mysql.user WHERE User = %s AND is_role = 'N'", [user])
    return [str(row[0]) for row in rows]


def roles_of(url: str, user: str, host: str) -> list[str]:
    rows = execute(
        url,
        "SELECT Role FROM mysql.roles_mapping WHERE User = %s AND Host = %s ORDER BY Role",
        [user, host],
    )
    return [str(row[0]) for row in rows]


def role_exists(url: str, role: str) -> bool:
    return bool(execute(url, "SELECT 1 FROM mysql.user WHERE User = %s AND is_role = 'Y'", [role]))


def sessions_of(url: str, user: str) -> int:
    rows = execute(
        url, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", [user]
    )
    return int(rows[0][0])


def refuses_login(url: str) -> bool:
    try:
        connect(url).close()
    except pymysql.err.OperationalError:
        return True
    return False


def is_dead(conn: Any) -> bool:
    """Whether a session was ended by the server (its next statement fails)."""
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DRIVER_ERRORS:
        return True
    finally:
        conn.close()
    return False


@contextmanager
def scratch_database(url: str, facts: int = 42) -> Iterator[str]:
    """A database holding tables `facts` (n = `facts`) and `secrets`; dropped afterwards."""
    name = unique("db")
    execute(url, f"CREATE DATABASE `{name}`")
    try:
        execute(url, f"CREATE TABLE `{name}`.facts AS SELECT {int(facts)} AS n")
        execute(url, f"CREATE TABLE `{name}`.secrets AS SELECT 'hidden' AS s")
        yield name
    finally:
        execute(url, f"DROP DATABASE IF EXISTS `{name}`")


@contextmanager
def scratch_role(url: str, *grants: str) -> Iterator[str]:
    """A role holding `grants` ("SELECT ON db.*"); dropped afterwards."""
    name = unique("role")
    execute(url, f"CREATE ROLE `{name}`")
    try:
        for grant in grants:
            execute(url, f"GRANT {grant} TO `{name}`")
        yield name
    finally:
        execute(url, f"DROP ROLE IF EXISTS `{name}`")


@contextmanager
def scratch_user(url: str, password: str, host: str = "%") -> Iterator[str]:
    """A hand-made user (`name`@`host`); dropped afterwards."""
    name = unique("user")
    execute(url, "CREATE USER %s@%s IDENTIFIED BY %s", [name, host, password])
    try:
        yield name
    finally:
        execute(url, "DROP USER IF EXISTS %s@%s", [name, host])
