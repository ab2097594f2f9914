"""The MariaDB connector's admin sessions: a small pool lending one autocommit connection to one
operation at a time, error codes that tell a lost connection, and the reads of the grant tables."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from queue import Empty, LifoQueue
from typing import Any

import pymysql  # type: ignore[import-untyped]

from jitaccess.adapters.connectors.mariadb_grants import USER_PREFIX
from jitaccess.domain.errors import ConnectorError

CLIENT_ERROR = 2000  # codes from 2000 up come from the client: the connection itself failed


class Session:
    """One admin connection lent to one operation."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def rows(self, statement: str, args: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cursor:
            cursor.execute(statement, args)
            return [tuple(row) for row in cursor.fetchall()]

    def me(self) -> tuple[str, str]:
        user, _, host = str(self.rows("SELECT CURRENT_USER()")[0][0]).rpartition("@")
        return user, host


class ConnectionPool:
    """Up to `size` autocommit connections, each lent to one thread at a time."""

    def __init__(self, connect: Callable[[], Any], size: int = 8, wait: float = 30.0) -> None:
        self._connect = connect
        self._idle: LifoQueue[Any] = LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._wait = wait
        self._closed = False

    @contextmanager
    def session(self) -> Iterator[Session]:
        if not self._slots.acquire(timeout=self._wait):
            raise ConnectorError("timed out waiting for a free database connection")
        conn: Any = None
        reusable = True
        try:
            conn = self._take()
            yield Session(conn)
        except BaseException as exc:
            # After an error the server reported (or one of ours) the protocol is still in step.
            server_said = (
                isinstance(exc, pymysql.err.MySQLError) and 0 < error_code(exc) < CLIENT_ERROR
            )
            reusable = server_said or isinstance(exc, ConnectorError)
            raise
        finally:
            if conn is not None and reusable and conn.open and not self._closed:
                self._idle.put(conn)
            elif conn is not None:
                with suppress(Exception):
                    conn.close()
            self._slots.release()

    def _take(self) -> Any:
        with suppress(Empty):
            while True:
                conn = self._idle.get_nowait()
                if conn.open:
                    return conn
        return self._connect()

    def close(self) -> None:
        """Close the idle connections (a lent one is closed when it comes back)."""
        self._closed = True
        self.drain()

    def drain(self) -> None:
        while True:
            try:
                conn = self._idle.get_nowait()
            except Empty:
                return
            with suppress(Exception):
                conn.close()


def error_code(exc: Exception) -> int:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0


def hosts_of(session: Session, name: str) -> list[str]:
    rows = session.rows("SELECT Host FROM mysql.user WHERE User = %s AND is_role = 'N'", [name])
    return [str(r[0]) for r in rows]


def read_accounts(
    session: Session,
) -> tuple[
    list[tuple[str, str, str]],
    set[tuple[str, str]],
    list[tuple[str, str, str, bool]],
    tuple[str, str],
]:
    """jit_ users (user, host, default role), the locked ones, every role grant, and the admin."""
    prefix = [len(USER_PREFIX), USER_PREFIX]
    users = session.rows(
        "SELECT User, Host, default_role FROM mysql.user"
        " WHERE is_role = 'N' AND LEFT(User, %s) = %s ORDER BY User, Host",
        prefix,
    )
    locked = session.rows(
        "SELECT User, Host FROM mysql.global_priv WHERE LEFT(User, %s) = %s"
        " AND JSON_VALUE(Priv, '$.account_locked') IN ('1', 'true')",
        prefix,
    )
    mapping = session.rows("SELECT User, Host, Role, Admin_option FROM mysql.roles_mapping")
    return (
        [(str(u), str(h), str(d or "")) for u, h, d in users],
        {(str(u), str(h)) for u, h in locked},
        [(str(u), str(h), str(r), a == "Y") for u, h, r, a in mapping],
        session.me(),
    )
