"""What a mariadb role's `grants` may say (roles, and privileges in a small GRANT grammar checked
against allow-lists), and the admin URL the connector connects with."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

USER_PREFIX = "jit_"  # the users jitaccess makes; no granted role may take it
DEFAULT_PORT = 3306

_NAME = r"[A-Za-z0-9_$]{1,64}"
ROLE_NAME = re.compile(_NAME, re.ASCII)
_ENTRY = re.compile(
    rf"\s*(?P<privileges>[A-Za-z][A-Za-z ,]*?)\s+ON\s+(?:`(?P<qdb>{_NAME})`|(?P<db>{_NAME}))"
    rf"\.(?:(?P<star>\*)|`(?P<qtable>{_NAME})`|(?P<table>{_NAME}))\s*",
    re.ASCII | re.IGNORECASE,
)
TABLE_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "INDEX", "ALTER", "CREATE VIEW"}
    | {"SHOW VIEW", "TRIGGER", "REFERENCES", "DELETE HISTORY", "ALL", "ALL PRIVILEGES"}
)
DATABASE_PRIVILEGES = TABLE_PRIVILEGES | {
    "CREATE ROUTINE", "ALTER ROUTINE", "EXECUTE", "CREATE TEMPORARY TABLES", "LOCK TABLES", "EVENT"
}  # fmt: skip
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})


@dataclass(frozen=True)
class Privilege:
    """One `mariadb_privileges` entry, parsed: privileges ON database.table (None: every table)."""

    privileges: tuple[str, ...]
    database: str
    table: str | None

    def statement(self) -> str:
        # In a database-level grant `_` is a wildcard; escaped, the grant names one database.
        on = f"`{self.database}`.`{self.table}`" if self.table else f"`{_literal_db(self)}`.*"
        return f"GRANT {', '.join(self.privileges)} ON {on} TO %s@%s"


def _literal_db(privilege: Privilege) -> str:
    return privilege.database.replace("_", "\\_")


def parse_privilege(entry: str) -> Privilege:
    """`"SELECT, INSERT ON app.orders"` → Privilege; ValueError (a reason) when not allowed."""
    match = _ENTRY.fullmatch(entry)
    if match is None:
        raise ValueError("expected 'PRIVILEGE[, ...] ON database.table' or 'ON database.*'")
    database = match["qdb"] or match["db"]
    table = match["qtable"] or match["table"]
    if database.lower() in SYSTEM_SCHEMAS:
        raise ValueError(f"privileges on the system schema {database} are not granted")
    names = [" ".join(p.split()).upper() for p in match["privileges"].split(",")]
    allowed = TABLE_PRIVILEGES if table else DATABASE_PRIVILEGES
    for name in names:
        if name == "GRANT OPTION":
            raise ValueError("GRANT OPTION is refused: what the grantee grants would outlive it")
        if name not in allowed:
            scope = "a table" if table else "a database"
            raise ValueError(f"{name or 'an empty privilege'} is not a privilege on {scope}")
    if len(names) > 1 and {"ALL", "ALL PRIVILEGES"} & set(names):
        raise ValueError("ALL must stand alone")
    return Privilege(tuple(dict.fromkeys(names)), database, table)


def parse_grants(
    grants: Mapping[str, Any],
) -> tuple[list[str], list[Privilege], list[tuple[str, str]]]:
    """The roles and privileges a role's `grants` give, and the problems found in them."""
    problems: list[tuple[str, str]] = []
    roles: list[str] = []
    privileges: list[Privilege] = []
    for key in grants:
        if key not in ("mariadb_roles", "mariadb_privileges"):
            problems.append((str(key), "unknown key: expected mariadb_roles, mariadb_privileges"))
    if "mariadb_roles" not in grants and "mariadb_privileges" not in grants:
        problems.append(
            ("", "needs {mariadb_roles: [ROLE, ...]} and/or {mariadb_privileges: [...]}")
        )
    for key in ("mariadb_roles", "mariadb_privileges"):
        if key not in grants:
            continue
        values = grants[key]
        if not isinstance(values, list | tuple) or not values:
            problems.append((key, "must be a non-empty list"))
            continue
        for index, value in enumerate(values):
            where = f"{key}[{index}]"
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            if not isinstance(value, str):
                problems.append((where, f"{shown} is not a string"))
            elif key == "mariadb_roles":
                if not ROLE_NAME.fullmatch(value) or value.lower() in ("none", "public"):
                    problems.append((where, f"{shown} is not a role name (letters, digits, _, $)"))
                elif value.startswith(USER_PREFIX):
                    problems.append((where, f"{shown}: the {USER_PREFIX} prefix is jitaccess's"))
                elif value not in roles:
                    roles.append(value)
            else:
                try:
                    privileges.append(parse_privilege(value))
                except ValueError as reason:
                    problems.append((where, f"{shown}: {reason}"))
    return roles, privileges, problems


def role_names(grants: Mapping[str, Any]) -> list[str]:
    """The `mariadb_roles` of a role's grants, as strings (unchecked)."""
    roles = grants.get("mariadb_roles") or ()
    return [roles] if isinstance(roles, str) else [str(role) for role in roles]


@dataclass(frozen=True)
class AdminEndpoint:
    """Where and as whom the admin connects, from `mysql://USER:PASSWORD@HOST:PORT/[DB]`."""

    user: str
    password: str
    host: str
    port: int
    database: str | None = None
    unix_socket: str | None = None
    ssl_ca: str | None = None


def parse_admin_url(url: str) -> AdminEndpoint:
    """ValueError with a reason that never quotes the URL (it holds the password)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
        query = dict(
            parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        )
    except ValueError:
        raise ValueError("the admin URL is malformed (a bad port or query?)") from None
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError("the admin URL must start with mysql:// or mariadb://")
    unknown = sorted(set(query) - {"unix_socket", "ssl_ca"})
    if unknown:
        raise ValueError(f"unknown admin URL parameter(s): {', '.join(unknown)}")
    if not parts.username:
        raise ValueError("the admin URL names no user")
    if not parts.hostname and not query.get("unix_socket"):
        raise ValueError("the admin URL names no host")
    return AdminEndpoint(
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        host=parts.hostname or "localhost",
        port=port,
        database=unquote(parts.path.lstrip("/")) or None,
        unix_socket=query.get("unix_socket") or None,
        ssl_ca=query.get("ssl_ca") or None,
    )
