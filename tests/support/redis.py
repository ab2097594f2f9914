"""Real Redis for tests: a private `redis-server` per test module, on a free loopback port in a
temp dir, so tests that add and delete ACL users never touch anyone else's."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest
import redis

REDIS_SERVER = os.environ.get("JITACCESS_TEST_REDIS_SERVER", "/usr/bin/redis-server")
ADMIN_USER = "jitadmin"


def _unavailable(reason: str) -> NoReturn:
    """CI must run the Redis suite, so there a missing server fails; locally it skips."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require_redis() -> str:
    """The redis-server binary, or skip (fail under CI=true) when there is none."""
    found = REDIS_SERVER if Path(REDIS_SERVER).is_file() else shutil.which("redis-server")
    if not found:
        _unavailable(f"redis-server not found at {REDIS_SERVER} or on PATH")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    """True once the server answers PING; False if it exited (e.g. the port was taken)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
                client.ping()
            return True
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server did not answer within 10 s: {log.read_text()[-2000:]}")


@contextmanager
def private_redis(*, admin_user: str | None = ADMIN_USER) -> Iterator[str]:
    """A throwaway redis-server that checks passwords; yields the admin URL, password included.

    With `admin_user` the admin is that ACL user and `default` is off; with None the server
    uses `requirepass` and the admin is the `default` user (URL `redis://:pw@host:port/0`)."""
    binary = require_redis()
    workdir = Path(tempfile.mkdtemp(prefix="jit_redis_"))
    password = secrets.token_urlsafe(16)
    if admin_user:
        auth = f"user default off\nuser {admin_user} on >{password} ~* &* +@all\n"
        url_user = quote(admin_user, safe="")
    else:
        auth = f"requirepass {password}\n"
        url_user = ""
    process: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(3):  # another process may take the free port before we bind it
            port = _free_port()
            config = workdir / "redis.conf"
            config.write_text(
                f'port {port}\nbind 127.0.0.1\ndir {workdir}\nsave ""\nappendonly no\n'
                f"daemonize no\nlogfile {workdir / 'log'}\n{auth}"
            )
            config.chmod(0o600)
            process = subprocess.Popen(
                [binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            url = f"redis://{url_user}:{quote(password, safe='')}@127.0.0.1:{port}/0"
            if _wait_ready(process, url, workdir / "log"):
                break
            process.wait(5)
            process = None
            if attempt == 2:
                raise RuntimeError(f"redis-server would not start: {_tail(workdir / 'log')}")
        yield url
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(log: Path) -> str:
    try:
        return log.read_text()[-2000:]
    except OSError:
        return "(no log)"


def acl_user_exists(admin_url: str, name: str) -> bool:
    with redis.Redis.from_url(admin_url, decode_responses=True) as client:
        return name in client.acl_users()


def clients_of(admin_url: str, name: str) -> int:
    """Connections logged in as `name`."""
    with redis.Redis.from_url(admin_url, decode_responses=True) as client:
        return sum(1 for c in client.client_list() if c.get("user") == name)
