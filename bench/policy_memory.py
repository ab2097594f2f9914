"""Where the time and memory of loading a large stored policy go, in a fresh process.

Stores a generated policy (bench/policy_document.py) in a scratch database, then replays what
`SqlPolicies._build` does with it, step by step: the document without its eligibility list
is read and decoded (`frame`); the eligibility rows are streamed and decoded a batch at a time
(`eligibility stream`); `DocumentReader` builds the `Policy` from both (`build`; in the load
the rows are built as they arrive); its eligibility index is built (`indexes`). Then the whole
load once more through `SqlPolicies.current()` (`load`: all of the above), as the server does.

`python -m bench.policy_memory --users N --roles R` prints one JSON object: seconds per step;
with `--trace`, tracemalloc over the real load: its peak, and at two moments (halfway through
the rows; the policy loaded, which is what the process keeps) the memory by source file.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import date
from typing import Any

from sqlalchemy import Engine

from bench.policy_document import generate, role_name, store, user_name
from bench.setup import scratch_database
from jitaccess.adapters.db import policy_repository
from jitaccess.adapters.db.migrate import upgrade_database
from jitaccess.adapters.db.policy_repository import SqlPolicies
from jitaccess.adapters.db.unit_of_work import libpq_dsn_to_url, make_engine
from jitaccess.adapters.policy_document import DocumentReader

MB = 1024 * 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_memory", description=__doc__)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--roles", type=int, default=10)
    parser.add_argument("--store", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--trace", action="store_true", help="tracemalloc (slower)")
    args = parser.parse_args(argv)
    with _engine(args.store) as engine:
        document = generate(args.users, args.roles)
        stored_mb = len(json.dumps(document)) / MB
        version = store(engine, document)
        del document
        result = measure(engine, version, args.trace)
    result.update(users=args.users, roles=args.roles, store=args.store)
    result["stored_json_mb"] = round(stored_mb, 1)
    print(json.dumps(result))
    return 0


@contextmanager
def _engine(kind: str) -> Iterator[Engine]:
    with ExitStack() as stack:
        if kind == "postgres":
            url = libpq_dsn_to_url(stack.enter_context(scratch_database("jit_bench_policy")))
        else:
            url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/policy.db"
        engine = make_engine(url)
        stack.callback(engine.dispose)
        upgrade_database(engine)
        yield engine


def measure(engine: Engine, version: int, trace: bool) -> dict[str, Any]:
    seconds, rows = _steps(engine, version)
    gc.collect()
    snapshots: dict[str, tracemalloc.Snapshot] = {}
    if trace:
        _snapshot_at_row(snapshots, rows // 2)
        tracemalloc.start(1)
    started = time.perf_counter()
    with engine.connect() as conn:
        loaded = SqlPolicies(conn).current()
    assert loaded is not None and loaded.version == version
    seconds["load"] = time.perf_counter() - started
    policy = loaded.policy
    assert policy.is_eligible(user_name(0), role_name(0), date.today())
    gc.collect()
    result: dict[str, Any] = {
        "eligibility_rows": len(policy.eligibility),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        snapshots["loaded"] = tracemalloc.take_snapshot()
        tracemalloc.stop()
        rows = max(1, rows)
        result["tracemalloc"] = {
            "peak_mb": round(peak / MB, 1),
            "kept_mb": round(current / MB, 1),
            "peak_bytes_per_row": round(peak / rows),
            "kept_bytes_per_row": round(current / rows),
            "by_file": {moment: _by_file(snap) for moment, snap in snapshots.items()},
        }
    return result


def _steps(engine: Engine, version: int) -> tuple[dict[str, float], int]:
    """The load's steps one by one, as `SqlPolicies._build` runs them."""
    seconds: dict[str, float] = {}
    with engine.connect() as conn:
        policies = SqlPolicies(conn)
        queries = policy_repository._QUERIES[conn.dialect.name]
        reader = DocumentReader(f"stored policy v{version}")
        started = time.perf_counter()
        assert policies._read_frame(reader, queries, version) == "array"
        seconds["frame"] = time.perf_counter() - started
        started = time.perf_counter()
        with policy_repository._collector_paused():  # as in the load
            decoded = list(policies._eligibility(queries, version))
        seconds["eligibility_stream"] = time.perf_counter() - started
    started = time.perf_counter()
    with policy_repository._collector_paused():
        policy = reader.policy(iter(decoded))
        seconds["build"] = time.perf_counter() - started
        started = time.perf_counter()
        policy.build_indexes()
        seconds["indexes"] = time.perf_counter() - started
    return seconds, len(policy.eligibility)


def _snapshot_at_row(snapshots: dict[str, tracemalloc.Snapshot], at: int) -> None:
    """A snapshot when row `at` is built: the shape of the memory during the load."""
    build_row = DocumentReader.eligibility_row

    def eligibility_row(self: DocumentReader, row: Any, index: int) -> Any:
        if index == at:
            snapshots["halfway"] = tracemalloc.take_snapshot()
        return build_row(self, row, index)

    DocumentReader.eligibility_row = eligibility_row  # type: ignore[method-assign]


def _by_file(snapshot: tracemalloc.Snapshot, top: int = 8) -> list[dict[str, Any]]:
    stats = snapshot.statistics("filename")
    total = sum(s.size for s in stats)
    out = [{"file": "(all)", "mb": round(total / MB, 1)}]
    for stat in stats[:top]:
        name = stat.traceback[0].filename
        for marker in ("site-packages/", "src/", "python3.11/"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        out.append({"file": name, "mb": round(stat.size / MB, 1), "blocks": stat.count})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
