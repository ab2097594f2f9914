"""Running jitaccess as real processes: the server on a free port, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

CLI = str(Path(sys.executable).parent / "jitaccess")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll a real process's observable state (end-to-end only; unit tests use a fake clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Server:
    def __init__(self, env: dict[str, str], policy: Path, log: Path) -> None:
        self.env = env
        self.policy = policy
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [CLI, "serve", "--port", str(self.port), "--policy", str(self.policy)],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 30, "the server to be ready")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no chance to finish anything."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextmanager
def running_server(env: dict[str, str], policy: Path, log: Path) -> Iterator[Server]:
    server = Server(env, policy, log)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def cli(
    env: dict[str, str],
    *args: str,
    token: str | None = None,
    url: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    run_env = dict(env)
    if token is not None:
        run_env["JITACCESS_TOKEN"] = token
    if url is not None:
        run_env["JITACCESS_URL"] = url
    result = subprocess.run(
        [CLI, *args], env=run_env, capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"jitaccess {' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}"
        )
    return result


def cli_json(env: dict[str, str], *args: str, **kwargs: Any) -> Any:
    return json.loads(cli(env, *args, "--json", **kwargs).stdout)


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITACCESS_")}
    env.update({"JITACCESS_DATA_DIR": str(data_dir), "JITACCESS_LOG_LEVEL": "info", **extra})
    return env
