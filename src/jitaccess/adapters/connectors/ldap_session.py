"""The LDAP connector's connections: TLS that verifies the server, a small pool lending one bound
ldap3 connection to one operation at a time, and ldap3's errors told in plain words."""

from __future__ import annotations

import re
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from queue import Empty, LifoQueue
from typing import Any

from jitaccess.domain.errors import ConnectorError

with warnings.catch_warnings():
    # ldap3 2.9.1, the latest, imports pyasn1 names that pyasn1 0.6 deprecated (tagMap, typeMap).
    warnings.filterwarnings("ignore", r"(tag|type)Map is deprecated", DeprecationWarning)
    import ldap3  # type: ignore[import-untyped]
    from ldap3.core.exceptions import LDAPException  # type: ignore[import-untyped]


class VerifiedTls(ldap3.Tls):  # type: ignore[misc]
    """TLS that checks the certificate and the host name with Python's own SSLContext.

    ldap3 defaults to no verification at all and checks names with the deprecated
    ssl.match_hostname; this replaces both."""

    def __init__(self, host: str, ca_file: str | None) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._host, self._ca_file = host, ca_file

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        context = ssl.create_default_context(cafile=self._ca_file)
        connection.socket = context.wrap_socket(
            connection.socket, server_hostname=self._host, do_handshake_on_connect=do_handshake
        )


class ConnectionPool:
    """Up to `size` bound connections, each lent to one thread at a time."""

    def __init__(self, connect: Callable[[], Any], size: int = 4, wait: float = 30.0) -> None:
        self._connect = connect
        self._idle: LifoQueue[Any] = LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._wait = wait

    @contextmanager
    def connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self._wait):
            raise ConnectorError("timed out waiting for a free LDAP connection")
        try:
            try:
                conn = self._idle.get_nowait()
            except Empty:
                conn = self._connect()
            try:
                yield conn
            except ConnectorError:
                self._idle.put(conn)  # the server answered in full; the connection is fine
                raise
            except BaseException:
                # Its state is unknown after a failure (half-read response, dead socket).
                close_quietly(conn)
                raise
            self._idle.put(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with suppress(Empty):
            while True:
                close_quietly(self._idle.get_nowait())


def close_quietly(conn: Any) -> None:
    with suppress(LDAPException, OSError):
        conn.unbind()


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    # ldap3 re-raises socket errors wrapped in the repr of a tuple, sometimes twice.
    while unwrapped := re.fullmatch(r"""\(\s*(['"])(.*)\1,?\s*\)""", text, re.DOTALL):
        text = unwrapped[2]
    return f"{type(exc).__name__}: {text}"
