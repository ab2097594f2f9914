"""Several processes on one PostgreSQL: an API-only server and a separate worker process.

The worker's safety sleep is ten minutes, so only LISTEN/NOTIFY can wake it in time: a grant
requested through the server is provisioned, and ended, within seconds.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jitaccess.adapters.db.unit_of_work import libpq_dsn_to_url
from support.postgres import require_postgres, scratch_database
from support.processes import CLI, base_env, cli, cli_json, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

POLICY = """\
users:
  alice: {groups: [engineers]}
targets:
  demo: {type: fake}
roles:
  demo/read:
    target: demo
    duration: {default: 2s, max: 1h, min: 1s}
eligibility:
  - principals: [group:engineers]
    roles: [demo/read]
"""


@pytest.fixture
def database() -> Iterator[str]:
    require_postgres()
    with scratch_database("jit_replicas") as dsn:
        yield libpq_dsn_to_url(dsn)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([CLI, *args], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_a_separate_worker_is_woken_by_notify(database: str, tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        JITACCESS_DATABASE_URL=database,
        JITACCESS_WORKER_MAX_SLEEP_SECONDS="600",
        JITACCESS_LOG_LEVEL="debug",
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    cli(env, "db", "upgrade")
    cli(env, "policy", "apply", str(policy))
    token = cli_json(env, "token", "create", "--principal", "alice")["token"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [
        _start(["serve", "--no-worker", "--port", str(port)], env, tmp_path / "serve.log"),
        _start(["worker"], env, tmp_path / "worker.log"),
    ]
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 30, "the API server")
        # The worker must be in its ten-minute sleep before anything becomes due.
        wait_for(
            lambda: "worker idle for up to 600" in (tmp_path / "worker.log").read_text(),
            30,
            "the worker to go idle",
        )
        grant_id = cli_json(
            env, "request", "demo/read", "--for", "2s", "-r", "notify test", token=token, url=url
        )["grants"][0]

        def state() -> str:
            for grant in cli_json(env, "grants", token=token, url=url):
                if grant["id"] == grant_id:
                    return str(grant["state"])
            return "missing"

        wait_for(lambda: state() == "active", 10, "the worker to provision (woken by NOTIFY)")
        wait_for(lambda: state() == "expired", 15, "the worker to end the grant on time")
    finally:
        for process in processes:
            process.terminate()
            process.wait(15)
    assert cli(env, "audit", "verify", "--db").returncode == 0
