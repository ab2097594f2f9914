"""MariaDB connector: a user per grant, given the granted roles (active at login) and/or plain
privileges; revoke locks the user, kills its connections, drops it and checks nothing is left."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import pymysql  # type: ignore[import-untyped]

from jitaccess.adapters.connectors.common import options, read_connection
from jitaccess.adapters.connectors.mariadb_grants import (
    ROLE_NAME,
    USER_PREFIX,
    Privilege,
    parse_admin_url,
    parse_grants,
    role_names,
)
from jitaccess.adapters.connectors.mariadb_session import (
    CLIENT_ERROR,
    ConnectionPool,
    Session,
    error_code,
    hosts_of,
    read_accounts,
)
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

log = logging.getLogger(__name__)
T = TypeVar("T")

WRAPPER_SUFFIX = "_roles"  # the role that carries several granted roles (see _grant_roles)
# KILL only flags the thread; it leaves the process list when it next checks the flag.
_SESSION_GONE_TIMEOUT = 5.0
_POLL_INTERVAL = 0.02
_UNKNOWN_THREAD = 1094
_REQUIRED_RIGHTS = ("CREATE USER", "PROCESS")
_KILL_RIGHTS = ("CONNECTION ADMIN", "SUPER")
_OPTIONS = ("host_for_clients", "user_host", "max_user_connections")

USER_HOST = re.compile(r"[A-Za-z0-9.%_:/-]{1,255}", re.ASCII)
_JIT_USER = re.compile(r"jit_(?P<person>[a-z0-9_]+)_(?P<suffix>[a-z0-9]{1,8})", re.ASCII)


def user_name(principal: str, grant_id: str) -> str:
    """`jit_<principal>_<grant suffix>`: readable in the process list, unique per grant."""
    person = re.sub(r"[^a-z0-9]+", "_", principal.lower()).strip("_")[:20].strip("_") or "x"
    suffix = re.sub(r"[^a-z0-9]", "", grant_id.lower())[-8:]
    if not suffix:
        raise ConnectorError(f"grant id {grant_id!r} has no letters or digits to name a user")
    return f"{USER_PREFIX}{person}_{suffix}"


def _native_hash(password: str) -> str:
    """The mysql_native_password verifier, so the password itself never reaches the server (nor
    its logs, nor an error message quoting the statement)."""
    inner = hashlib.sha1(password.encode(), usedforsecurity=False).digest()
    return "*" + hashlib.sha1(inner, usedforsecurity=False).hexdigest().upper()


def _identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MariaDBConnector:
    """Grants access as a per-grant MariaDB user; see PRODUCT.md "Connectors".

    Options: `host_for_clients` (the host credentials name), `user_host` (the host part of the
    users made, default '%'), `max_user_connections`. The admin needs CREATE USER, PROCESS and
    CONNECTION ADMIN (or SUPER), SELECT and UPDATE on `mysql`, and ADMIN OPTION on the roles
    it grants — `check` tests the first three.
    """

    per_grant_account = True

    def __init__(self, target: Target, admin_url: str) -> None:
        self.target = target
        try:
            self._admin = parse_admin_url(admin_url)
        except ValueError as reason:
            raise ConnectorError(self._say(str(reason))) from None
        settings = options(target)
        unknown = sorted(set(settings) - set(_OPTIONS))
        if unknown:
            raise ConnectorError(self._say(f"unknown option(s): {', '.join(unknown)}"))
        self._host_for_clients = str(settings.get("host_for_clients") or self._admin.host)
        self._user_host = str(settings.get("user_host", "%")).lower()
        if not USER_HOST.fullmatch(self._user_host):
            raise ConnectorError(self._say("option user_host is not a host name, IP or pattern"))
        limit = settings.get("max_user_connections", 0)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConnectorError(self._say("option max_user_connections must be an integer >= 0"))
        self._max_user_connections = limit
        self._pool = ConnectionPool(self._connect)
        self._rights_checked = False

    @classmethod
    def from_target(cls, target: Target) -> MariaDBConnector:
        return cls(target, read_connection(target))

    @staticmethod
    def grant_problems(grants: dict[str, Any]) -> list[tuple[str, str]]:
        return parse_grants(grants)[2]

    # --- the Connector protocol ------------------------------------------------------------

    def provision(self, access: Access) -> dict[str, str]:
        roles, privileges, problems = parse_grants(access.grants)
        if problems:
            reasons = "; ".join(f"{key or 'grants'}: {reason}" for key, reason in problems)
            raise ConnectorError(self._say(f"grant {access.grant_id} is not valid: {reasons}"))
        name = user_name(access.principal, access.grant_id)
        password = secrets.token_urlsafe(24)
        self._run(
            f"cannot provision user {name}",
            lambda s: self._provision(s, name, roles, privileges, _native_hash(password)),
        )
        log.info("provisioned user %s@%s for grant %s", name, self._user_host, access.grant_id)
        database = privileges[0].database if privileges else None
        return self._credentials(name, password, database)

    def revoke(self, access: Access) -> None:
        name = user_name(access.principal, access.grant_id)
        # Every host of the name: user_host may have changed since the grant was provisioned.
        hosts = self._run(f"cannot revoke user {name}", lambda s: hosts_of(s, name))
        for host in hosts or [self._user_host]:
            self._drop_user(name, host)
        log.info("revoked user %s of grant %s", name, access.grant_id)

    def extend(self, access: Access) -> None:
        """Nothing to move: MariaDB has no account expiry that ends access at a time (password
        expiry still lets the user log in to change it), so the worker's revoke is the lock."""

    def account_of(self, access: Access) -> str:
        return f"{user_name(access.principal, access.grant_id)}@{self._user_host}"

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        """Every `jit_` user, plus every other user or role holding a governed role (one a policy
        role grants here): membership added by hand shows up as drift. Only the name of a jit_
        user is known, so its principal and grant id are given as parsed from it, in `detail`.

        The admin itself is left out (it must hold the roles WITH ADMIN OPTION to grant them);
        any other holder is listed, a role's creator too: `detail["admin_option"]` names the
        roles it may administer, which `remove` would take from it as well."""
        wanted = {role for grants in governed for role in role_names(grants)}
        users, locked, mapping, me = self._run("cannot list access", read_accounts)
        held: dict[tuple[str, str], list[str]] = {}
        administers: dict[tuple[str, str], list[str]] = {}
        for user, host, role, admin_option in mapping:
            held.setdefault((user, host), []).append(role)
            if admin_option:
                administers.setdefault((user, host), []).append(role)
        found = []
        for user, host, default_role in users:
            wrapper = user + WRAPPER_SUFFIX
            direct = held.get((user, host), [])
            member_of = [r for r in direct if r != wrapper] + (
                held.get((wrapper, ""), []) if wrapper in direct else []
            )
            parsed = _JIT_USER.fullmatch(user)
            detail = {
                "member_of": sorted(member_of),
                "default_role": default_role or None,
                "locked": (user, host) in locked,
                "name_principal": parsed["person"] if parsed else None,
                "grant_suffix": parsed["suffix"] if parsed else None,
            }
            found.append(ExistingAccess(None, f"{user}@{host}", None, detail))
        for (user, host), roles in sorted(held.items()):
            governed_roles = sorted(set(roles) & wanted)
            if not governed_roles or user.startswith(USER_PREFIX) or (user, host) == me:
                continue
            detail = {
                "member_of": governed_roles,
                "kind": "role" if host == "" else "user",
                "hand_made": True,
                "admin_option": sorted(set(administers.get((user, host), [])) & wanted),
            }
            found.append(ExistingAccess(None, f"{user}@{host}" if host else user, None, detail))
        return found

    def remove(self, existing: ExistingAccess) -> None:
        """Drift repair. A `jit_` user no grant explains is dropped like a revoke (connections
        killed). A hand-made holder only loses the governed roles `list_access` found (and a
        default role among them): its open connections are left alone, and keep the role they
        have enabled until they reconnect — killing a service account's connections could take
        down an application."""
        if existing.detail.get("kind") == "role":
            user, host = existing.account, ""
        else:
            user, _, host = existing.account.rpartition("@")
            if not user:
                raise ConnectorError(self._say(f"{existing.account} is not a user@host account"))
            if user.startswith(USER_PREFIX):
                self._drop_user(user, host)
                log.info("removed user %s@%s (drift)", user, host)
                return
        roles = [str(r) for r in existing.detail.get("member_of", ())]
        if not all(ROLE_NAME.fullmatch(r) for r in roles):
            raise ConnectorError(self._say(f"cannot remove {existing.account}: bad role names"))
        self._run(
            f"cannot revoke {', '.join(roles)} from {existing.account}",
            lambda s: self._take_roles(s, user, host, roles),
        )
        log.info("revoked %s from %s (drift)", ", ".join(roles), existing.account)

    def check(self) -> None:
        def probe(session: Session) -> list[str]:
            user, host = session.me()
            rows = session.rows(
                "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s",
                [f"'{user}'@'{host}'"],
            )
            have = {str(row[0]).upper() for row in rows}
            missing = [right for right in _REQUIRED_RIGHTS if right not in have]
            if not have & set(_KILL_RIGHTS):
                missing.append(" or ".join(_KILL_RIGHTS))
            if not missing:
                read_accounts(session)  # and it can read the grant tables
            return missing

        missing = self._run("cannot check the admin's rights", probe)
        if missing:
            raise ConnectorError(self._say(f"the admin lacks {', '.join(missing)}"))
        self._rights_checked = True

    def close(self) -> None:
        self._pool.close()

    # --- steps ------------------------------------------------------------------------------

    def _provision(
        self,
        session: Session,
        name: str,
        roles: list[str],
        privileges: list[Privilege],
        verifier: str,
    ) -> None:
        known = {str(r[0]) for r in session.rows("SELECT User FROM mysql.user WHERE is_role='Y'")}
        missing = [role for role in roles if role not in known]
        if missing:
            raise ConnectorError(self._say(f"mariadb_roles not found: {', '.join(missing)}"))
        for privilege in privileges:
            if privilege.table and not session.rows(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                " AND TABLE_NAME = %s",
                [privilege.database, privilege.table],
            ):
                where = f"{privilege.database}.{privilege.table}"
                raise ConnectorError(self._say(f"mariadb_privileges: no table {where}"))
        account = [name, self._user_host]
        # A retry after a crash finds the user: it gets a new password and its grants again.
        limit = self._max_user_connections
        attributes = f"IDENTIFIED BY PASSWORD %s WITH MAX_USER_CONNECTIONS {limit:d}"
        session.rows(f"CREATE USER IF NOT EXISTS %s@%s {attributes}", [*account, verifier])
        session.rows(f"ALTER USER %s@%s {attributes} ACCOUNT UNLOCK", [*account, verifier])
        for privilege in privileges:
            session.rows(privilege.statement(), account)
        if roles:
            self._grant_roles(session, name, roles)

    def _grant_roles(self, session: Session, name: str, roles: list[str]) -> None:
        # MariaDB activates one default role at login; several roles are granted to a role of
        # the user's own, whose granted roles are active with it.
        if len(roles) == 1:
            active = roles[0]
        else:
            active = name + WRAPPER_SUFFIX
            session.rows(f"CREATE ROLE IF NOT EXISTS {_identifier(active)}")
            for role in roles:
                session.rows(f"GRANT {_identifier(role)} TO {_identifier(active)}")
        session.rows(f"GRANT {_identifier(active)} TO %s@%s", [name, self._user_host])
        session.rows(f"SET DEFAULT ROLE {_identifier(active)} FOR %s@%s", [name, self._user_host])

    def _drop_user(self, name: str, host: str) -> None:
        """Lock, kill every connection, drop (with its role of roles); then confirm it is gone."""

        if not self._rights_checked:
            self.check()  # without PROCESS the process list would hide the sessions to kill

        def drop(session: Session) -> None:
            session.rows("ALTER USER IF EXISTS %s@%s ACCOUNT LOCK", [name, host])
            self._kill_sessions(session, name)
            session.rows("DROP USER IF EXISTS %s@%s", [name, host])
            session.rows(f"DROP ROLE IF EXISTS {_identifier(name + WRAPPER_SUFFIX)}")
            if host in hosts_of(session, name):
                raise ConnectorError(self._say(f"user {name}@{host} still exists after DROP USER"))
            self._kill_sessions(session, name)

        self._run(f"cannot drop user {name}@{host}", drop)

    def _kill_sessions(self, session: Session, name: str) -> None:
        # Sessions outlive DROP USER in MariaDB, so they are killed until none is left.
        deadline = time.monotonic() + _SESSION_GONE_TIMEOUT
        while True:
            alive = session.rows(
                "SELECT ID FROM information_schema.PROCESSLIST"
                " WHERE USER = %s AND ID <> CONNECTION_ID()",
                [name],
            )
            if not alive:
                return
            if time.monotonic() > deadline:
                raise ConnectorError(self._say(f"{len(alive)} session(s) of {name} outlived KILL"))
            for (thread,) in alive:
                try:
                    session.rows(f"KILL CONNECTION {int(thread):d}")
                except pymysql.err.OperationalError as exc:
                    if exc.args[0] != _UNKNOWN_THREAD:  # it ended on its own meanwhile
                        raise
            time.sleep(_POLL_INTERVAL)

    def _take_roles(self, session: Session, user: str, host: str, roles: list[str]) -> None:
        role_holder = host == ""
        grantee, args = (_identifier(user), None) if role_holder else ("%s@%s", [user, host])

        def held() -> set[str]:
            rows = session.rows(
                "SELECT Role FROM mysql.roles_mapping WHERE User = %s AND Host = %s", [user, host]
            )
            return {str(r[0]) for r in rows} & set(roles)

        for role in held():
            session.rows(f"REVOKE {_identifier(role)} FROM {grantee}", args)
        if not role_holder:
            default = session.rows(
                "SELECT default_role FROM mysql.user WHERE User = %s AND Host = %s", [user, host]
            )
            if default and default[0][0] in roles:
                session.rows("SET DEFAULT ROLE NONE FOR %s@%s", [user, host])
        if held():
            raise ConnectorError(self._say(f"{', '.join(sorted(held()))} still granted"))

    # --- plumbing ---------------------------------------------------------------------------

    def _credentials(self, name: str, password: str, database: str | None) -> dict[str, str]:
        host, port = self._host_for_clients, str(self._admin.port)
        netloc_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        path = quote(database or "", safe="")
        login = f"{quote(name, safe='')}:{quote(password, safe='')}"
        dsn = f"mysql://{login}@{netloc_host}:{port}/{path}"
        found = dict(username=name, password=password, host=host, port=port, dsn=dsn)
        return found | ({"database": database} if database else {})

    def _connect(self) -> Any:
        admin = self._admin
        return pymysql.connect(
            host=admin.host,
            port=admin.port,
            user=admin.user,
            password=admin.password,
            database=admin.database,
            unix_socket=admin.unix_socket,
            ssl={"ca": admin.ssl_ca} if admin.ssl_ca else None,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=10,
            read_timeout=60,
            write_timeout=60,
            program_name="jitaccess",
        )

    def _run(self, what: str, work: Callable[[Session], T]) -> T:
        """Run `work` on a pooled connection; once more on a fresh one if the first one died."""
        for attempt in (1, 2):
            try:
                with self._pool.session() as session:
                    return work(session)
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                lost = (
                    isinstance(exc, pymysql.err.InterfaceError) or error_code(exc) >= CLIENT_ERROR
                )
                if lost:
                    self._pool.drain()  # its idle siblings probably died with it
                # Every step is idempotent, so repeating it after a lost connection is safe.
                if attempt == 2 or not lost:
                    raise self._failure(what, exc) from None
            except pymysql.err.MySQLError as exc:
                raise self._failure(what, exc) from None
            except OSError as exc:  # e.g. an unreadable ssl_ca file
                raise ConnectorError(self._say(f"{what}: {exc.strerror or exc}")) from None
        raise AssertionError("unreachable")

    def _failure(self, what: str, exc: Exception) -> ConnectorError:
        # Not chained, so only this scrubbed text reaches tracebacks and logs. Issued passwords
        # never reach the server (only their hash does), so no server message can quote one.
        code = error_code(exc)
        text = (str(exc.args[1]) if len(exc.args) > 1 else str(exc)) or type(exc).__name__
        if self._admin.password:
            text = text.replace(self._admin.password, "***")
        return ConnectorError(self._say(f"{what}: {text}" + (f" (error {code})" if code else "")))

    def _say(self, message: str) -> str:
        return f"mariadb target {self.target.name}: {message.strip()}"
