"""`python -m bench.run` (`make bench`): run the benchmarks, print a table, write
bench/results/latest.json and the results section of bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import activation_latency, revocation_lag
from bench.setup import ForeignLoad, progress, server_version

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "latest.json"
README = HERE / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

Runner = Callable[[argparse.Namespace], list[dict[str, Any]]]
BENCHMARKS: dict[str, Runner] = {
    revocation_lag.NAME: lambda args: revocation_lag.run(args.quick),
    activation_latency.NAME: lambda args: activation_latency.run(
        args.quick, HERE / "results" if args.profile else None
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer grants and iterations")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), help="run one benchmark")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the activation path with cProfile into bench/results/*.txt; the "
        "profiler slows what it watches, so a profiled run does not update the results",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    machine = machine_facts()
    progress(
        f"machine: {machine['cpus']} CPU(s), {machine['cpu_model']}, Python "
        f"{machine['python']}, PostgreSQL {machine['postgresql']}"
    )
    ran: dict[str, Any] = {}
    for name, runner in BENCHMARKS.items():
        if args.only and name != args.only:
            continue
        began, others = time.monotonic(), ForeignLoad()
        results = runner(args)
        ran[name] = {
            "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "seconds": round(time.monotonic() - began, 1),
            "other_processes_cpu": others.cores(),
            "results": results,
        }
        other = ran[name]["other_processes_cpu"]
        progress(
            f"{name}: done in {ran[name]['seconds']:.0f}s; other processes used "
            f"{other['cores']:.2f} of {machine['cpus']} cores meanwhile {other['top']}"
        )
    runtime = round(time.monotonic() - started, 1)
    command = " ".join(
        [".venv/bin/python -m bench.run", *(argv if argv is not None else sys.argv[1:])]
    )
    document = merge(load(RESULTS), ran, machine, command.strip(), runtime)
    rows = table_rows(document)
    print()
    print(text_table(rows))
    print()
    if args.profile:
        progress("profiled run: latest.json and README.md left as they were")
    else:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(document, indent=2) + "\n")
        write_readme(document, rows)
        progress(f"wrote {RESULTS.relative_to(HERE.parent)} and {README.relative_to(HERE.parent)}")
    progress(f"total runtime {runtime:.0f}s")
    return 0


# --- facts and results -------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))  # what `nproc` prints
    except AttributeError:
        cpus = os.cpu_count() or 0
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no", "--", "src"):
        commit += " + uncommitted changes in src/"
    return {
        "cpus": cpus,
        "cpu_model": model,
        "python": platform.python_version(),
        "postgresql": server_version(),
        "os": platform.platform(),
        "commit": commit or "unknown",
    }


def _git(*args: str) -> str:
    """Read-only git queries, so the results say which code they measured."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def load(path: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document


def merge(
    previous: dict[str, Any],
    ran: dict[str, Any],
    machine: dict[str, Any],
    command: str,
    runtime: float,
) -> dict[str, Any]:
    """This run's benchmarks replace their earlier results; `--only` keeps the others."""
    benchmarks = dict(previous.get("benchmarks", {}))
    benchmarks.update(ran)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "runtime_s": runtime,
        "machine": machine,
        "benchmarks": {name: benchmarks[name] for name in BENCHMARKS if name in benchmarks},
    }


# --- tables ------------------------------------------------------------------------------------

HEADER = ("Benchmark", "Series", "n", "p50", "p99", "max", "Target", "Result")


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} ms"


def _verdict(met: bool) -> str:
    return "met" if met else "**MISSED**"


def table_rows(document: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, entry in document.get("benchmarks", {}).items():
        quick = " (quick)" if entry.get("quick") else ""
        for r in entry["results"]:
            if name == revocation_lag.NAME:
                lag, seen = r["lag_ms"], r["poller"]
                rows.append(
                    (
                        f"Revocation lag{quick}",
                        f"{r['variant']}: ended_at - ends_at",
                        str(lag["n"]),
                        _ms(lag["p50"]),
                        _ms(lag["p99"]),
                        _ms(lag["max"]),
                        r["target"],
                        _verdict(r["met"]),
                    )
                )
                rows.append(
                    (
                        f"Revocation lag{quick}",
                        f"{r['variant']}: account gone in target (poller)",
                        f"{seen['seen_gone']}/{seen['sampled']}",
                        _ms(seen["p50_observed_lag_ms"]),
                        "",
                        _ms(seen["max_observed_lag_ms"]),
                        "",
                        "",
                    )
                )
            elif name == activation_latency.NAME:
                jit, raw, ratio = r["jitaccess_ms"], r["raw_sql_ms"], r["ratio"]
                title = f"Request+approve+provision{quick}"
                rows.append(
                    (
                        title,
                        f"jitaccess, {r['variant']}",
                        str(jit["n"]),
                        _ms(jit["p50"]),
                        _ms(jit["p99"]),
                        _ms(jit["max"]),
                        "",
                        "",
                    )
                )
                rows.append(
                    (
                        title,
                        f"raw SQL (same run), {r['variant']}",
                        str(raw["n"]),
                        _ms(raw["p50"]),
                        _ms(raw["p99"]),
                        _ms(raw["max"]),
                        "",
                        "",
                    )
                )
                rows.append(
                    (
                        title,
                        f"ratio jitaccess / raw, {r['variant']}",
                        "",
                        f"{ratio['p50']:.2f}x",
                        f"{ratio['p99']:.2f}x",
                        "",
                        r["target"],
                        _verdict(r["met"]),
                    )
                )
    return rows


def text_table(rows: list[tuple[str, ...]]) -> str:
    plain = [tuple(cell.replace("**", "") for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in [HEADER, *plain]) for i in range(len(HEADER))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in plain]
    return "\n".join(out)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def breakdown_tables(document: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    for name, entry in document.get("benchmarks", {}).items():
        for r in entry["results"]:
            steps = r.get("breakdown_ms", {})
            if not steps:
                continue
            title = "Revocation lag" if name == revocation_lag.NAME else "Activation"
            rows = [
                (step.replace("_", " "), str(s["n"]), _ms(s["p50"]), _ms(s["p99"]), _ms(s["max"]))
                for step, s in steps.items()
            ]
            handled = (
                f"{r['iterations']} activations" if "iterations" in r else f"{r['grants']} expiries"
            )
            passes = (
                f" (the worker loop made {r['worker_passes']} passes for {handled})"
                if "worker_passes" in r
                else ""
            )
            parts.append(f"**{title}, {r['variant']}** — where the time goes{passes}:\n")
            parts.append(markdown_table(("Step", "n", "p50", "p99", "max"), rows) + "\n")
    return parts


def missed_notes(document: dict[str, Any]) -> list[str]:
    notes = []
    for entry in document.get("benchmarks", {}).values():
        for r in entry["results"]:
            if r["met"]:
                continue
            if "ratio" in r:
                figure = f"p50 {r['ratio']['p50']:.2f}x, p99 {r['ratio']['p99']:.2f}x"
            else:
                figure = f"p99 {r['lag_ms']['p99']:.1f} ms"
                if r.get("not_ended"):
                    figure += f", {r['not_ended']} grant(s) not ended"
            notes.append(f"- **Target missed**: {r['benchmark']} ({r['variant']}): {figure}; "
                         f"target {r['target']}.")  # fmt: skip
    return notes


def results_section(document: dict[str, Any], rows: list[tuple[str, ...]]) -> str:
    m = document["machine"]
    runs = "; ".join(
        f"{name} at {e['ran_at']} ({e['seconds']:.0f}s{', quick' if e['quick'] else ''}; "
        f"other processes used {e.get('other_processes_cpu', {}).get('cores', '?')} "
        f"of {m['cpus']} cores meanwhile)"
        for name, e in document["benchmarks"].items()
    )
    lines = [
        f"Generated {document['generated_at']} by `{document['command']}` "
        f"(total {document['runtime_s']:.0f}s) on commit `{m['commit']}`.",
        "",
        f"Machine: {m['cpus']} CPUs (`nproc`), {m['cpu_model']}; Python {m['python']}; "
        f"PostgreSQL {m['postgresql']}; {m['os']}.",
        "",
        f"Runs: {runs}.",
        "",
        markdown_table(HEADER, rows),
        "",
        *missed_notes(document),
        "",
        *breakdown_tables(document),
    ]
    return "\n".join(lines).strip()


def write_readme(document: dict[str, Any], rows: list[tuple[str, ...]]) -> None:
    section = f"{START}\n{results_section(document, rows)}\n{END}"
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    README.write_text(pattern.sub(lambda _: section, text, count=1))


if __name__ == "__main__":
    raise SystemExit(main())
