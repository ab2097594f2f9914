"""GET /api/v1/check under concurrent load: the real app (`jitaccess serve --no-worker`, uvicorn,
in its own process) against a bare FastAPI endpoint of the same shape (bench/bare_check.py),
one after the other on the same database, each driven by the same load process
(bench/http_load.py: keep-alive connections from several threads, closed loop).

The database holds 10,000 active grants (bulk) and one API token per client thread, made by
the `create_token` use case; each thread asks about its own principal's grant.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the dev extras (types-psutil)

from bench.bulk import ActiveGrant, insert_active_grants, settle
from bench.setup import ForeignLoad, jitaccess_stack, process_env, progress, run_id
from jitaccess.services.manage_tokens import create_token

NAME = "check_api"
ROLE = "bench/read"
TARGET_RATIO = 0.7
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    grants: int
    seconds: float  # timed part of each measurement
    rounds: int  # bare, jitaccess, bare, jitaccess … (alternated against drift in load)
    threads: int = 8
    warmup: float = 2.0


FULL = Plan(grants=10_000, seconds=6.0, rounds=2)
QUICK = Plan(grants=2_000, seconds=3.0, rounds=1)


def policy(run: str) -> str:
    return (
        f"admins: [group:security]\nusers:\n  {run}admin: {{groups: [security]}}\n"
        "targets:\n  bench: {type: fake}\n"
        f"roles:\n  {ROLE}:\n    target: bench\n    grants: {{scope: read}}\n"
        "    duration: {default: 1h, min: 1s, max: 8h}\n"
        f"eligibility:\n  - principals: [group:security]\n    roles: [{ROLE}]\n"
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    stores = ["postgres"] if quick else ["postgres", "sqlite"]
    return [measure(store, plan) for store in stores]


def measure(store: str, plan: Plan) -> dict[str, Any]:
    run = run_id()
    label = f"{store} store"
    progress(f"{NAME} [{label}]: {plan.grants} active grants, {plan.threads} clients (run {run})")
    with ExitStack() as stack:
        bench = stack.enter_context(jitaccess_stack(store, policy(run)))
        container = bench.container
        now = datetime.now(UTC)
        wanted = [
            ActiveGrant(f"{run}p{i:06d}", now - timedelta(minutes=1), now + timedelta(hours=2))
            for i in range(plan.grants)
        ]
        insert_active_grants(container, ROLE, wanted, f"{NAME} [{label}]")
        settle(container, f"{NAME} [{label}]")
        tokens = []
        for i in range(plan.threads):
            with container.uow() as uow:
                _, secret = create_token(
                    uow, container.clock, principal=f"{run}p{i * 7:06d}", created_by="bench"
                )
            tokens.append(secret)
        url = container.settings.resolved_database_url
        env = process_env(container)
        servers = {
            "bare": [sys.executable, "-m", "bench.bare_check", "--database-url", url],
            "jitaccess": [
                sys.executable,
                "-m",
                "jitaccess.entrypoints.cli",
                "serve",
                "--no-worker",
            ],
        }
        samples: dict[str, list[dict[str, Any]]] = {"bare": [], "jitaccess": []}
        for round_ in range(plan.rounds):
            for name, command in servers.items():
                with start_server(command, env) as (process, base):
                    server = psutil.Process(process.pid)
                    cpu_before = sum(server.cpu_times()[:2])
                    others, began = ForeignLoad(), time.monotonic()
                    sample = _load(f"{base}/api/v1/check?role={ROLE}", tokens, plan)
                    elapsed = time.monotonic() - began
                    cpu = sum(server.cpu_times()[:2]) - cpu_before
                    load = others.cores()
                every = max(1, int(sample["requests_with_warmup"]))
                sample["server_cpu_ms_per_request"] = round(cpu * 1000 / every, 3)
                sample["postgres_cpu_ms_per_request"] = round(
                    load["postgres_cores"] * elapsed * 1000 / every, 3
                )
                sample["other_processes_cores"] = load["cores"]
                samples[name].append(sample)
                progress(
                    f"{NAME} [{label}] round {round_ + 1}/{plan.rounds}: {name} "
                    f"{sample['requests_per_s']:.0f} req/s, p50 "
                    f"{sample['latency_ms']['p50']:.1f} ms, p99 {sample['latency_ms']['p99']:.1f} "
                    f"ms, {sample['errors']} errors; server CPU "
                    f"{sample['server_cpu_ms_per_request']:.2f} ms a request"
                )
    return _report(samples, label, store, plan)


def _report(
    samples: dict[str, list[dict[str, Any]]], label: str, store: str, plan: Plan
) -> dict[str, Any]:
    def best(name: str) -> dict[str, Any]:
        # The round with the highest throughput: the least disturbed by other processes.
        return max(samples[name], key=lambda s: float(s["requests_per_s"]))

    jit, bare = best("jitaccess"), best("bare")
    ratio = (
        round(jit["requests_per_s"] / bare["requests_per_s"], 3) if bare["requests_per_s"] else 0
    )
    result = {
        "benchmark": NAME,
        "variant": label,
        "store": store,
        "threads": plan.threads,
        "seconds": plan.seconds,
        "jitaccess": jit,
        "bare": bare,
        "rounds": samples,
        "ratio": ratio,
        "target": f"throughput >= {TARGET_RATIO}x bare",
        "met": jit["errors"] == 0 and ratio >= TARGET_RATIO,
    }
    progress(
        f"{NAME} [{label}]: jitaccess {jit['requests_per_s']:.0f} req/s (p99 "
        f"{jit['latency_ms']['p99']:.1f} ms) vs bare {bare['requests_per_s']:.0f} req/s (p99 "
        f"{bare['latency_ms']['p99']:.1f} ms): {ratio:.2f}x"
    )
    return result


def _load(url: str, tokens: list[str], plan: Plan) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.http_load", url, "--threads", str(plan.threads)]
    command += ["--seconds", str(plan.seconds), "--warmup", str(plan.warmup)]
    for token in tokens:
        command += ["--token", token]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    sample: dict[str, Any] = json.loads(done.stdout)
    return sample


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def start_server(
    command: list[str], env: dict[str, str], up_within: float = 60.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start `command --port PORT` (its output in a temp file, shown if it dies), wait until
    /healthz answers, and stop it afterwards."""
    port = free_port()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=ROOT, env=env, stdout=output, stderr=output
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(process, f"{base}/healthz", output, up_within)
            yield process, base
        finally:
            stop(process)


def wait_until_up(
    process: subprocess.Popen[bytes], url: str, output: IO[bytes], limit: float = 60.0
) -> float:
    """Seconds until `url` answers 200; raises if the process exits or `limit` passes."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if process.poll() is not None:
            output.seek(0)
            error = output.read().decode(errors="replace")
            raise RuntimeError(f"server exited with {process.returncode}: {error[-2000:]}")
        with suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {limit:.0f}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
