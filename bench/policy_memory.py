"""Where the time and memory of loading a large stored policy go, in a fresh process.

Replays what `SqlPolicies._load` does with a stored version: the document arrives as JSON and
is decoded (psycopg does that), is encoded back to text, and `load_policy_text` composes it
with PyYAML into nodes, walks the nodes into drafts and builds the `Policy`; the first
eligibility check then builds the index.

`python -m bench.policy_memory --users N --roles R` prints one JSON object: seconds per step;
with `--trace`, tracemalloc's peak and, at two moments (the YAML nodes composed; the policy
loaded, which is what the process keeps), the memory by source file, largest first.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import yaml
from yaml.nodes import Node

from bench.policy_document import generate, role_name, user_name
from jitaccess.adapters import policy_schema
from jitaccess.adapters.policy_yaml import load_policy_text

MB = 1024 * 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_memory", description=__doc__)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--roles", type=int, default=10)
    parser.add_argument("--trace", action="store_true", help="tracemalloc (slower)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.users, args.roles, args.trace)))
    return 0


def measure(users: int, roles: int, trace: bool) -> dict[str, Any]:
    stored = json.dumps(generate(users, roles))  # the bytes the database hands back
    gc.collect()
    snapshots: dict[str, tracemalloc.Snapshot] = {}
    seconds: dict[str, float] = {}
    _wrap_compose(seconds)
    if trace:
        _snapshot_when_composed(snapshots)
        tracemalloc.start(1)
    started = time.perf_counter()
    document = json.loads(stored)
    seconds["json_decode"] = time.perf_counter() - started
    started = time.perf_counter()
    text = json.dumps(document, ensure_ascii=False)
    seconds["json_encode"] = time.perf_counter() - started
    started = time.perf_counter()
    policy = load_policy_text(text, "policy v1", check_files=False)
    seconds["load_policy_text"] = time.perf_counter() - started
    seconds["walk_and_build"] = seconds["load_policy_text"] - seconds.get("yaml_compose", 0.0)
    del text
    started = time.perf_counter()
    assert policy.is_eligible(user_name(0), role_name(0), date.today())
    seconds["eligibility_index"] = time.perf_counter() - started
    gc.collect()
    result: dict[str, Any] = {
        "users": users,
        "roles": roles,
        "eligibility_rows": len(policy.eligibility),
        "stored_json_mb": round(len(stored) / MB, 1),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    started = time.perf_counter()
    yaml.compose(stored, Loader=yaml.CSafeLoader)
    result["seconds"]["yaml_compose_with_libyaml"] = round(time.perf_counter() - started, 2)
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        snapshots["loaded"] = tracemalloc.take_snapshot()
        tracemalloc.stop()
        rows = max(1, len(policy.eligibility))
        result["tracemalloc"] = {
            "peak_mb": round(peak / MB, 1),
            "kept_mb": round(current / MB, 1),
            "peak_bytes_per_row": round(peak / rows),
            "by_file": {moment: _by_file(snap) for moment, snap in snapshots.items()},
        }
    del document, policy
    return result


def _wrap_compose(seconds: dict[str, float]) -> None:
    """Time PyYAML's compose step inside load_policy_text (the module calls yaml.compose)."""
    compose: Callable[..., Node | None] = yaml.compose

    def timed(*args: Any, **kwargs: Any) -> Node | None:
        started = time.perf_counter()
        try:
            return compose(*args, **kwargs)
        finally:
            seconds["yaml_compose"] = time.perf_counter() - started

    yaml.compose = timed


def _snapshot_when_composed(snapshots: dict[str, tracemalloc.Snapshot]) -> None:
    """A snapshot when the walk starts: every YAML node is alive then (the peak's shape)."""
    walk = policy_schema.FileWalk.document

    def document(self: policy_schema.FileWalk, root: Node | None) -> None:
        snapshots["composed"] = tracemalloc.take_snapshot()
        walk(self, root)

    policy_schema.FileWalk.document = document  # type: ignore[method-assign]


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
