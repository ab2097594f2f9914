"""Passwords for PostgreSQL login roles, with their SCRAM-SHA-256 verifiers made ahead of need.

The connector sends PostgreSQL only the verifier (`CREATE ROLE … PASSWORD 'SCRAM-SHA-256$…'`),
never the password, so it stays out of server logs and statement statistics. Making a verifier
takes 4,096 rounds of PBKDF2 — several milliseconds, a third of an activation's time on a slow
machine — and a verifier does not depend on the role it is for (unlike MD5's). So a thread makes
a few ahead (`Verifiers`), in hashlib, which lets other threads run meanwhile; a provision takes
a ready pair, or makes one itself if none is left.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from queue import Empty, Queue

# PostgreSQL's default (`scram_iterations`, PostgreSQL 16+); the server accepts any count.
ITERATIONS = 4096
AHEAD = 4


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    """What PostgreSQL stores for `password` (RFC 5802 / 7677, as libpq's PQencryptPasswordConn
    makes it). The password must be ASCII without control characters, which SASLprep leaves
    as it is (the connector's are URL-safe base64)."""
    if not password.isascii() or not password.isprintable():
        raise ValueError("only printable ASCII passwords are hashed here")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def new_password() -> tuple[str, str]:
    """A fresh random password (32 URL-safe characters) and its verifier."""
    password = secrets.token_urlsafe(24)
    return password, scram_sha256_verifier(password)


class Verifiers:
    """Up to `ahead` (password, verifier) pairs made in advance on a daemon thread, started at
    the first `take`; each pair is handed out once."""

    def __init__(self, ahead: int = AHEAD) -> None:
        self._ready: Queue[tuple[str, str]] = Queue(maxsize=ahead)
        self._lock = threading.Lock()
        self._started = False

    def take(self) -> tuple[str, str]:
        self._start()
        try:
            return self._ready.get_nowait()
        except Empty:
            return new_password()

    def _start(self) -> None:
        with self._lock:
            if not self._started:
                threading.Thread(target=self._fill, name="jit-scram", daemon=True).start()
                self._started = True

    def _fill(self) -> None:
        while True:
            self._ready.put(new_password())  # waits while `ahead` are ready


# One per process: verifiers belong to no target.
VERIFIERS = Verifiers()
