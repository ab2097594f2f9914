"""Real PostgreSQL for tests: the shared server, scratch databases on it, and private clusters
with password authentication (the shared server trusts everyone, so it cannot refuse a login)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ADMIN_DSN = os.environ.get("JITACCESS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BIN_DIRS = (os.environ.get("JITACCESS_TEST_PG_BIN", ""), "/usr/lib/postgresql/15/bin")


def _unavailable(reason: str) -> NoReturn:
    """CI must run the PostgreSQL suite, so there a missing server fails; locally it skips."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _where(dsn: str) -> str:
    params = conninfo_to_dict(dsn)  # never show the password
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"


def require_postgres(dsn: str = ADMIN_DSN) -> str:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _unavailable(f"PostgreSQL not reachable at {_where(dsn)}: {reason}")
    return dsn


def with_database(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


@contextmanager
def scratch_database(prefix: str = "jit_test", admin_dsn: str = ADMIN_DSN) -> Iterator[str]:
    """A new, uniquely named database for one test; dropped (sessions and all) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [name],
            )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _pg_bin() -> Path:
    for directory in PG_BIN_DIRS:
        if directory and (Path(directory) / "initdb").is_file():
            return Path(directory)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    _unavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found in {PG_BIN_DIRS[1]}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def private_cluster(auth: str = "scram-sha-256") -> Iterator[str]:
    """A throwaway cluster that checks passwords; yields the superuser DSN, password included."""
    bindir = _pg_bin()
    as_root = os.geteuid() == 0
    # initdb refuses to run as root, so the cluster belongs to the postgres OS user.
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    workdir = Path(tempfile.mkdtemp(prefix="jit_pg_"))
    try:
        if as_root:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("no postgres OS user to own a private cluster (initdb refuses root)")
            os.chown(workdir, owner.pw_uid, owner.pw_gid)
        password = secrets.token_urlsafe(16)
        pwfile = workdir / "pwfile"
        pwfile.write_text(password + "\n")
        if as_root:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        data = workdir / "data"

        def run(*args: str) -> None:
            result = subprocess.run(
                [*prefix, *args], cwd=workdir, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            auth,
            f"--pwfile={pwfile}",
            "--no-sync",
            "--locale=C",
            "-E",
            "UTF8",
        )
        pwfile.unlink()
        for _attempt in range(3):  # another process may take the free port before we bind it
            port = _free_port()
            options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -F"
            try:
                run(
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(workdir / "log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "30",
                    "start",
                )
                break
            except RuntimeError:
                if _attempt == 2:
                    raise
        try:
            yield f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{port}/postgres"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", "-w")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def role_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
    return row is not None


def backends_of(dsn: str, role: str) -> int:
    """Sessions that logged in as `role` (those that ran SET ROLE still count)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [role]
        ).fetchone()
    return int(row[0]) if row else 0
