"""PostgreSQL connector: a login role per grant, member of the granted roles; revoke ends its
sessions, reassigns what it owns in every database and drops it."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC
from pathlib import Path
from queue import Empty, LifoQueue
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from jitaccess.adapters.connectors.scram import VERIFIERS
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

log = logging.getLogger(__name__)

Connection = psycopg.Connection[TupleRow]
T = TypeVar("T")

ROLE_PREFIX = "jit_"
_COMMENT = re.compile(r"^jitaccess grant (?P<grant_id>\S+) principal (?P<principal>.+)$", re.DOTALL)
# Termination is asynchronous: pg_terminate_backend only signals the backend.
_SESSION_GONE_TIMEOUT = 2.0
_POLL_INTERVAL = 0.02


def login_role_name(principal: str, grant_id: str) -> str:
    """`jit_<principal>_<grant suffix>`: readable in pg_stat_activity, unique per grant."""
    person = re.sub(r"[^a-z0-9]+", "_", principal.lower()).strip("_")[:20].strip("_") or "x"
    suffix = re.sub(r"[^a-z0-9]", "", grant_id.lower())[-8:]
    if not suffix:
        raise ConnectorError(f"grant id {grant_id!r} has no letters or digits to name a role")
    return f"{ROLE_PREFIX}{person}_{suffix}"


class _ConnectionPool:
    """Up to `size` autocommit connections to one database, each lent to one thread at a time."""

    def __init__(self, conninfo: str, size: int, wait: float = 30.0) -> None:
        self._conninfo = conninfo
        self._idle: LifoQueue[Connection] = LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._wait = wait
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        if not self._slots.acquire(timeout=self._wait):
            raise ConnectorError("timed out waiting for a free database connection")
        conn: Connection | None = None
        try:
            conn = self._take()
            yield conn
        finally:
            if conn is not None:
                self._give_back(conn)
            self._slots.release()

    def _take(self) -> Connection:
        while True:
            try:
                conn = self._idle.get_nowait()
            except Empty:
                return psycopg.connect(self._conninfo, autocommit=True)
            if not (conn.closed or conn.broken):
                return conn
            conn.close()

    def _give_back(self, conn: Connection) -> None:
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if self._closed or conn.closed or conn.broken or not idle:
            conn.close()
        else:
            self._idle.put(conn)

    def close(self) -> None:
        self._closed = True
        with suppress(Empty):  # a lent connection is closed when it comes back
            while True:
                self._idle.get_nowait().close()


class PostgresConnector:
    """Grants access as a per-grant LOGIN role; see PRODUCT.md "Connectors"."""

    per_grant_account = True

    def __init__(
        self, target: Target, admin_dsn: str, *, host_for_clients: str | None = None
    ) -> None:
        self.target = target
        self._options: dict[str, Any] = dict(target.options)
        try:
            self._params: dict[str, Any] = conninfo_to_dict(admin_dsn)
        except psycopg.Error:
            # The parser's message may quote the string, password included.
            raise ConnectorError(self._say("the admin connection string is not valid")) from None
        self._params.setdefault("connect_timeout", 10)
        self._params.setdefault("application_name", "jitaccess")
        self._admin_password = str(self._params.get("password") or "")
        self._host_for_clients = host_for_clients
        self._admin_db = str(self._params.get("dbname") or self._params.get("user") or "postgres")
        self._pools: dict[str, _ConnectionPool] = {}
        self._pools_lock = threading.Lock()

    @classmethod
    def from_target(cls, target: Target) -> PostgresConnector:
        ref = target.connection
        if ref is None or not (ref.env or ref.file):
            raise ConnectorError(f"target {target.name}: no admin connection configured")
        if ref.env:
            value = os.environ.get(ref.env, "").strip()
            if not value:
                raise ConnectorError(
                    f"target {target.name}: environment variable {ref.env} is not set or empty"
                )
        else:
            try:
                value = Path(str(ref.file)).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConnectorError(
                    f"target {target.name}: cannot read admin connection file {ref.file}: "
                    f"{exc.strerror or type(exc).__name__}"
                ) from None
            if not value:
                raise ConnectorError(
                    f"target {target.name}: admin connection file {ref.file} is empty"
                )
        return cls(target, value, host_for_clients=dict(target.options).get("host_for_clients"))

    # --- the Connector protocol ------------------------------------------------------------

    def provision(self, access: Access) -> dict[str, str]:
        name = login_role_name(access.principal, access.grant_id)
        member_of = _granted_roles(access)
        # Only the SCRAM verifier reaches the server: the password stays out of its logs and
        # statements. Verifiers are made ahead of need (scram.py).
        password, verifier = VERIFIERS.take()
        for attempt in (1, 2):
            try:
                self._run(lambda conn: self._provision(conn, access, name, member_of, verifier))
                break
            except ConnectorError as exc:
                # Two workers creating the same role: the loser retries and takes the ALTER path.
                racing = isinstance(
                    exc.__cause__, psycopg.errors.UniqueViolation | psycopg.errors.DuplicateObject
                )
                if attempt == 2 or not racing:
                    raise
        log.info("provisioned role %s for grant %s", name, access.grant_id)
        return self._credentials(name, password)

    def revoke(self, access: Access) -> None:
        name = login_role_name(access.principal, access.grant_id)
        role_oid = self._run(lambda conn: self._disable(conn, name, access.grant_id))
        if role_oid is None:
            return
        self._run(lambda conn: self._end_sessions(conn, name, role_oid))
        for dbname in self._run(_connectable_databases):
            self._clear_database(dbname, name)
        self._run(lambda conn: self._drop(conn, name, role_oid))
        log.info("revoked role %s of grant %s", name, access.grant_id)

    def extend(self, access: Access) -> None:
        name = login_role_name(access.principal, access.grant_id)
        until = sql.Literal(access.ends_at.astimezone(UTC).isoformat())

        def move_end(conn: Connection) -> None:
            with conn.transaction():
                found = _find_role(conn, name)
                if found is None or found[1] != access.grant_id:
                    raise ConnectorError(self._say(f"role {name} of {access.grant_id} is missing"))
                conn.execute(
                    sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(sql.Identifier(name), until)
                )

        self._run(move_end)

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        """Every `jit_` role, plus every other role that is a member of a governed role (one a
        policy role grants here): membership added by hand shows up as drift."""
        rows = self._run(
            lambda conn: conn.execute(
                """
                SELECT r.rolname, r.rolcanlogin,
                       CASE WHEN isfinite(r.rolvaliduntil) THEN r.rolvaliduntil END,
                       shobj_description(r.oid, 'pg_authid'),
                       ARRAY(SELECT g.rolname::text FROM pg_auth_members m
                             JOIN pg_roles g ON g.oid = m.roleid
                             WHERE m.member = r.oid ORDER BY 1)
                FROM pg_roles r WHERE left(r.rolname, length(%s)) = %s ORDER BY r.rolname
                """,
                [ROLE_PREFIX, ROLE_PREFIX],
            ).fetchall()
        )
        found = []
        for rolname, can_login, valid_until, comment, member_of in rows:
            marker = _COMMENT.match(comment or "")
            detail = {"member_of": member_of, "can_login": can_login, "valid_until": valid_until}
            principal, grant_id = (
                (marker["principal"], marker["grant_id"]) if marker else (None, None)
            )
            found.append(ExistingAccess(principal, rolname, grant_id, detail))
        roles = sorted({r for grants in governed for r in grants.get("postgres_roles", ())})
        if roles:
            holders = self._run(
                lambda conn: conn.execute(
                    """
                    SELECT m.rolname, array_agg(g.rolname::text ORDER BY g.rolname)
                    FROM pg_auth_members am
                    JOIN pg_roles g ON g.oid = am.roleid
                    JOIN pg_roles m ON m.oid = am.member
                    WHERE g.rolname = ANY(%s) AND left(m.rolname, length(%s)) <> %s
                      AND m.rolname <> current_user
                    GROUP BY m.rolname ORDER BY m.rolname
                    """,
                    [roles, ROLE_PREFIX, ROLE_PREFIX],
                ).fetchall()
            )
            for member, member_of in holders:
                detail = {"member_of": member_of, "hand_made": True}
                found.append(ExistingAccess(None, member, None, detail))
        return found

    def remove(self, existing: ExistingAccess) -> None:
        """Drift repair: a `jit_` role no grant explains is revoked like a grant (sessions
        ended, dropped); a hand-made member loses the governed roles, and keeps existing."""
        if existing.account.startswith(ROLE_PREFIX):
            grant_id = existing.grant_id or ""
            role_oid = self._run(lambda conn: self._disable_any(conn, existing.account, grant_id))
            if role_oid is None:
                return
            self._run(lambda conn: self._end_sessions(conn, existing.account, role_oid))
            for dbname in self._run(_connectable_databases):
                self._clear_database(dbname, existing.account)
            self._run(lambda conn: self._drop(conn, existing.account, role_oid))
            log.info("removed role %s (drift)", existing.account)
            return
        member_of = [str(r) for r in existing.detail.get("member_of", ())]

        def take_away(conn: Connection) -> None:
            for role in member_of:
                conn.execute(
                    sql.SQL("REVOKE {} FROM {}").format(
                        sql.Identifier(role), sql.Identifier(existing.account)
                    )
                )

        self._run(take_away)
        log.info("revoked %s from %s (drift)", ", ".join(member_of), existing.account)

    def account_of(self, access: Access) -> str:
        return login_role_name(access.principal, access.grant_id)

    def _disable_any(self, conn: Connection, name: str, grant_id: str) -> int | None:
        """Like _disable, for a role found by list_access whatever grant its comment names."""
        with conn.transaction():
            found = _find_role(conn, name)
            if found is None:
                return None
            return self._disable(conn, name, found[1] or grant_id)

    def check(self) -> None:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT current_user, rolsuper, rolcreaterole FROM pg_roles"
                " WHERE rolname = current_user"
            ).fetchone()
        )
        if row is None or not (row[1] or row[2]):
            who = row[0] if row else "the admin role"
            raise ConnectorError(self._say(f"{who} has neither SUPERUSER nor CREATEROLE"))

    def close(self) -> None:
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    # --- steps ------------------------------------------------------------------------------

    def _provision(
        self, conn: Connection, access: Access, name: str, member_of: list[str], verifier: str
    ) -> None:
        limit = int(self._options.get("connection_limit", -1))
        attributes = sql.SQL("LOGIN INHERIT PASSWORD {} VALID UNTIL {} CONNECTION LIMIT {}").format(
            sql.Literal(verifier),
            sql.Literal(access.ends_at.astimezone(UTC).isoformat()),
            sql.Literal(limit),
        )
        comment = f"jitaccess grant {access.grant_id} principal {access.principal}"
        ident = sql.Identifier(name)
        with conn.transaction():
            # One round trip for what is there (the roles to grant, and this grant's role if a
            # retry after a crash finds it), one for everything to do.
            row = conn.execute(_PROVISION_CHECK, [member_of, name]).fetchone()
            assert row is not None
            missing = sorted(set(member_of) - set(row[0]))
            if missing:
                raise ConnectorError(self._say(f"postgres_roles not found: {', '.join(missing)}"))
            found = _found(row[1], row[2])
            if found and found[1] != access.grant_id:
                raise ConnectorError(self._say(f"role {name} exists and is not this grant's"))
            # A retry after a crash finds the role: it gets a new password and the same end.
            verb = sql.SQL("ALTER" if found else "CREATE")
            steps = [
                sql.SQL("{} ROLE {} WITH ").format(verb, ident) + attributes,
                sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(comment)),
                *(sql.SQL("GRANT {} TO {}").format(sql.Identifier(r), ident) for r in member_of),
            ]
            # Several statements in one query: no parameters (values are quoted literals).
            conn.execute(sql.SQL("; ").join(steps))

    def _disable(self, conn: Connection, name: str, grant_id: str) -> int | None:
        """Stop new logins; the role's oid, or None when there is nothing of ours to revoke."""
        with conn.transaction():
            found = _find_role(conn, name)
            if found is None:
                return None
            if found[1] not in (grant_id, None):
                log.warning("role %s belongs to grant %s, left alone", name, found[1])
                return None
            ident = sql.Identifier(name)
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident))
            superuser = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            if not (superuser and superuser[0]):
                # A CREATEROLE admin needs membership to signal the role's backends and to
                # reassign or drop what it owns.
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        return found[0]

    def _end_sessions(self, conn: Connection, name: str, role_oid: int) -> None:
        # usesysid, not usename: a session that ran SET ROLE still counts as its login role,
        # and one whose role was already dropped has no name left.
        deadline = time.monotonic() + _SESSION_GONE_TIMEOUT
        while True:
            alive = conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usesysid = %s AND pid <> pg_backend_pid()",
                [role_oid],
            ).fetchall()
            if not alive:
                return
            if time.monotonic() > deadline:
                raise ConnectorError(
                    self._say(f"{len(alive)} session(s) of role {name} outlived termination")
                )
            time.sleep(_POLL_INTERVAL)

    def _clear_database(self, dbname: str, name: str) -> None:
        # DROP ROLE fails while the role owns objects or holds privileges in any database
        # (FIELD.md); REASSIGN first so the grantee's work survives, then DROP OWNED removes
        # the privileges and default privileges that REASSIGN leaves behind.
        reassign_to = self._options.get("reassign_to")
        new_owner = sql.Identifier(reassign_to) if reassign_to else sql.SQL("CURRENT_USER")

        def clear(conn: Connection) -> None:
            with conn.transaction():
                ident = sql.Identifier(name)
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(ident, new_owner))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))

        try:
            self._run(clear, dbname=dbname)
        except ConnectorError:
            # A database dropped since we listed it has nothing left to clear.
            if dbname in self._run(_connectable_databases):
                raise

    def _drop(self, conn: Connection, name: str, role_oid: int) -> None:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        if _find_role(conn, name) is not None:
            raise ConnectorError(self._say(f"role {name} still exists after DROP ROLE"))
        self._end_sessions(conn, name, role_oid)

    # --- plumbing ---------------------------------------------------------------------------

    def _credentials(self, name: str, password: str) -> dict[str, str]:
        host = self._host_for_clients or str(self._params.get("host") or "localhost")
        port = str(self._params.get("port") or "5432")
        dbname = str(self._options.get("database") or self._admin_db)
        if host.startswith("/"):  # a socket directory, written the way libpq URLs expect
            netloc_host = quote(host, safe="")
        else:
            netloc_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        dsn = (
            f"postgresql://{quote(name, safe='')}:{quote(password, safe='')}"
            f"@{netloc_host}:{port}/{quote(dbname, safe='')}"
        )
        return dict(username=name, password=password, host=host, port=port, dbname=dbname, dsn=dsn)

    def _pool(self, dbname: str) -> _ConnectionPool:
        with self._pools_lock:
            pool = self._pools.get(dbname)
            if pool is None:
                conninfo = make_conninfo("", **{**self._params, "dbname": dbname})
                pool = _ConnectionPool(conninfo, size=8 if dbname == self._admin_db else 2)
                self._pools[dbname] = pool
            return pool

    def _run(self, work: Callable[[Connection], T], *, dbname: str | None = None) -> T:
        """Run `work` on a pooled connection; once more on a fresh one if the first one died."""
        pool = self._pool(dbname or self._admin_db)
        for attempt in (1, 2):
            try:
                with pool.connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                # Every step is idempotent, so repeating it after a lost connection is safe.
                if attempt == 2:
                    raise ConnectorError(self._say(self._scrub(_describe(exc)))) from exc
            except psycopg.Error as exc:
                raise ConnectorError(self._say(self._scrub(_describe(exc)))) from exc
        raise AssertionError("unreachable")

    def _say(self, message: str) -> str:
        return f"postgres target {self.target.name}: {message.strip()}"

    def _scrub(self, text: str) -> str:
        # libpq does not echo passwords today; this keeps it so if a message ever quotes a DSN.
        # Generated passwords never reach the server (only their SCRAM verifier does).
        return text.replace(self._admin_password, "***") if self._admin_password else text


def _find_role(conn: Connection, name: str) -> tuple[int, str | None] | None:
    """The role's oid and the grant id its comment names (None if unmarked); None if no role."""
    row = conn.execute(
        "SELECT oid, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", [name]
    ).fetchone()
    return None if row is None else _found(row[0], row[1])


def _found(oid: int | None, comment: str | None) -> tuple[int, str | None] | None:
    if oid is None:
        return None
    match = _COMMENT.match(comment or "")
    return int(oid), (match["grant_id"] if match else None)


# Which of the roles to grant exist; this grant's role's oid and comment (NULLs if none).
_PROVISION_CHECK = """
SELECT ARRAY(SELECT rolname::text FROM pg_roles WHERE rolname = ANY(%s)),
       r.oid, shobj_description(r.oid, 'pg_authid')
FROM (SELECT %s::text AS name) wanted LEFT JOIN pg_roles r ON r.rolname = wanted.name
"""


def _describe(exc: psycopg.Error) -> str:
    # The detail says what blocks a DROP ROLE ("owner of table t in database d").
    detail = exc.diag.message_detail
    return f"{exc} ({detail})" if detail else str(exc)


def _connectable_databases(conn: Connection) -> list[str]:
    rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows]


def _granted_roles(access: Access) -> list[str]:
    roles: str | Sequence[str] = access.grants.get("postgres_roles", [])
    if isinstance(roles, str):
        roles = [roles]
    if not all(isinstance(r, str) and r for r in roles):
        raise ConnectorError(f"grant {access.grant_id}: postgres_roles must be role names")
    return list(roles)
