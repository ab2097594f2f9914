"""`python -m bench.run` (`make bench`): run the benchmarks, print the figures against their
baselines and targets, write bench/results/latest.json, the revocation-lag chart and the
results section of bench/README.md. Figures only: a missed target is reported, never failed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    activation_latency,
    audit_verify,
    check_api,
    cold_start,
    peak_rss,
    revocation_lag,
    throughput,
)
from bench.chart import write_revocation_chart
from bench.setup import ForeignLoad, progress, server_version

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "latest.json"
CHART = HERE / "results" / "revocation_lag.png"
README = HERE / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass(frozen=True)
class Benchmark:
    run: Callable[[argparse.Namespace], list[dict[str, Any]]]
    about: str
    in_default_run: bool = True


BENCHMARKS: dict[str, Benchmark] = {
    revocation_lag.NAME: Benchmark(
        lambda a: revocation_lag.run(a.quick),
        "ended_at - ends_at at 1k grants (postgres and fake connectors) and at 1k/10k/100k "
        "active grants (fake connector); target p99 <= 1 s (full ~4 min, quick ~1 min)",
    ),
    cold_start.NAME: Benchmark(
        lambda a: cold_start.run(a.quick),
        "a worker starts with 10,000 grants already past their end: time until all ended, "
        "rate (full ~2 min, quick ~20 s)",
    ),
    throughput.NAME: Benchmark(
        lambda a: throughput.run(a.quick),
        "request + auto-approval + provision from 4 threads, grants/s vs raw INSERTs of the "
        "same rows; target >= 300/s (full ~40 s, quick ~15 s)",
    ),
    check_api.NAME: Benchmark(
        lambda a: check_api.run(a.quick),
        "GET /api/v1/check under load vs a bare FastAPI endpoint of the same shape; target "
        ">= 0.7x its throughput (full ~1 min, quick ~20 s)",
    ),
    peak_rss.NAME: Benchmark(
        lambda a: peak_rss.run(a.quick),
        "peak RSS and policy load time of `jitaccess serve` with 100k active grants and a "
        "large policy, extrapolated to 1M eligibility rows; target <= 500 MB (full ~2 min)",
    ),
    audit_verify.NAME: Benchmark(
        lambda a: audit_verify.run(a.quick),
        "audit chain verification over 200k records vs hashlib alone; target >= 100k "
        "records/s (full ~1 min)",
    ),
    activation_latency.NAME: Benchmark(
        lambda a: activation_latency.run(a.quick, HERE / "results" if a.profile else None),
        "request + approval + provision latency vs the raw SQL of the postgres connector; "
        "target <= 3x (full ~1 min)",
    ),
    peak_rss.FULL_SCALE_NAME: Benchmark(
        lambda a: peak_rss.run_full_scale(a.quick),
        "peak_rss at the real 1,000,000 eligibility rows (not in the default run: the "
        "product takes ~7 min and 12 GB to load such a policy)",
        in_default_run=False,
    ),
}


def _help() -> str:
    lines = [
        textwrap.fill(b.about, 96, initial_indent=f"  {name:<19} ", subsequent_indent=" " * 22)
        for name, b in BENCHMARKS.items()
    ]
    return "benchmarks (all but peak_rss_full run by default):\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        epilog=_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes and shorter windows: about 2 minutes in all (the full run takes "
        "about 10); figures are marked (quick)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help="run only this benchmark (repeat for several); the others' last results are "
        f"kept. One of: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the activation path with cProfile into bench/results/*.txt; the "
        "profiler slows what it watches, so a profiled run does not update the results",
    )
    args = parser.parse_args(argv)
    chosen = args.only or [n for n, b in BENCHMARKS.items() if b.in_default_run]
    started = time.monotonic()
    machine = machine_facts()
    progress(
        f"machine: {machine['cpus']} CPU(s), {machine['cpu_model']}, Python "
        f"{machine['python']}, PostgreSQL {machine['postgresql']}; running {', '.join(chosen)}"
        + (" (quick)" if args.quick else "")
    )
    ran: dict[str, Any] = {}
    for i, name in enumerate(chosen, 1):
        progress(f"=== [{i}/{len(chosen)}] {name} ===")
        began, others = time.monotonic(), ForeignLoad()
        results = BENCHMARKS[name].run(args)
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
    rows = summary_rows(document)
    print()
    print(text_table(SUMMARY_HEADER, rows))
    print()
    if args.profile:
        progress("profiled run: latest.json, the chart and README.md left as they were")
    else:
        if revocation_lag.NAME in ran:
            entry = ran[revocation_lag.NAME]
            write_revocation_chart(
                entry["results"],
                CHART,
                f"Revocation lag, {entry['ran_at']}{' (quick)' if args.quick else ''}, "
                f"commit {machine['commit']}",
            )
            progress(f"wrote {CHART.relative_to(HERE.parent)}")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(document, indent=1) + "\n")
        write_readme(document, rows)
        progress(f"wrote {RESULTS.relative_to(HERE.parent)} and {README.relative_to(HERE.parent)}")
    progress(f"total runtime {runtime:.0f}s")
    return 0


# --- facts and results -------------------------------------------------------------------------


def _proc_field(path: str, name: str) -> str | None:
    """The value of `name: value` in a /proc file, or None where there is none."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def machine_facts() -> dict[str, Any]:
    model = _proc_field("/proc/cpuinfo", "model name") or "unknown"
    try:
        cpus = len(os.sched_getaffinity(0))  # what `nproc` prints
    except AttributeError:
        cpus = os.cpu_count() or 0
    total = _proc_field("/proc/meminfo", "MemTotal")
    memory = f"{int(total.split()[0]) / 1024 / 1024:.0f} GiB" if total else "unknown"
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no", "--", "src"):
        commit += " + uncommitted changes in src/"
    return {
        "cpus": cpus,
        "cpu_model": model,
        "memory": memory,
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

SUMMARY_HEADER = ("Benchmark", "Series", "Figure", "Baseline (same run)", "Ratio", "Target",
                  "Result")  # fmt: skip
TITLES = {
    revocation_lag.NAME: "Revocation lag",
    cold_start.NAME: "Cold-start recovery",
    throughput.NAME: "Request + auto-approve + provision throughput",
    check_api.NAME: "GET /api/v1/check under load",
    peak_rss.NAME: "Peak RSS, serve + worker",
    peak_rss.FULL_SCALE_NAME: "Peak RSS, serve + worker (1M rows)",
    audit_verify.NAME: "Audit chain verification",
    activation_latency.NAME: "Request + approve + provision latency",
}


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.1f} ms"


def _verdict(result: dict[str, Any]) -> str:
    if not result.get("target"):
        return "-"
    return "met" if result["met"] else "**MISSED**"


def _row(name: str, r: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """Series, figure, baseline, ratio for one result."""
    if name == revocation_lag.NAME:
        lag, seen = r["lag_ms"], r["poller"]
        series = r["variant"] + (f", {r['grants']:,} ending" if "active" in r else "")
        figure = f"p50 {_ms(lag['p50'])}, p99 {_ms(lag['p99'])}, max {_ms(lag['max'])}"
        baseline = (
            f"account seen gone (poller): p50 {_ms(seen['p50_observed_lag_ms'])}, max "
            f"{_ms(seen['max_observed_lag_ms'])}"
        )
        return series, figure, baseline, "", ""
    if name == cold_start.NAME:
        figure = f"{r['ended']:,}/{r['grants']:,} ended in {r['all_ended_s']:.1f} s"
        figure += f" ({r['rate_per_s']:,.0f}/s)"
        return r["variant"], figure, "", "", ""
    if name == throughput.NAME:
        jit, raw = r["jitaccess"], r["raw_inserts"]
        figure = (
            f"{jit['grants_per_s']:,.0f} grants/s ({jit['provisioned']:,} grants, "
            f"{r['threads']} threads; CPU a grant {jit['jitaccess_cpu_ms_per_grant']} ms)"
        )
        baseline = (
            f"raw INSERTs of the same {raw['rows_per_grant']:g} rows a grant: "
            f"{raw['grants_per_s']:,.0f} grants/s"
        )
        return r["variant"], figure, baseline, f"{r['ratio']:.2f}x", ""
    if name == check_api.NAME:
        jit, bare = r["jitaccess"], r["bare"]
        figure = f"{jit['requests_per_s']:,.0f} req/s, p99 {_ms(jit['latency_ms']['p99'])}"
        baseline = (
            f"bare endpoint: {bare['requests_per_s']:,.0f} req/s, p99 "
            f"{_ms(bare['latency_ms']['p99'])}"
        )
        return r["variant"], figure, baseline, f"{r['ratio']:.2f}x", ""
    if name in (peak_rss.NAME, peak_rss.FULL_SCALE_NAME):
        base, largest = r["points"][0], r["points"][-1]
        how = "extrapolated" if r["extrapolated"] else "measured"
        figure = (
            f"{how} at 1M rows: peak {r['peak_rss_mb_at_1m']:,} MB, policy loaded "
            f"{r['ready_s_at_1m']} s after start"
        )
        if r["extrapolated"]:
            figure += (
                f" (measured at {largest['eligibility_rows']:,} rows: "
                f"{largest['peak_rss_mb']:,.0f} MB, {largest['ready_s']} s)"
            )
        baseline = (
            f"same process, {base['eligibility_rows']:,}-row policy: {base['peak_rss_mb']:,.0f} MB"
        )
        ratio = (
            f"{r['peak_rss_mb_at_1m'] / peak_rss.TARGET_MB:.1f}x target"
            if r["peak_rss_mb_at_1m"]
            else ""
        )
        return r["variant"], figure, baseline, ratio, ""
    if name == audit_verify.NAME:
        figure = f"{r['records_per_s']:,} records/s ({r['records']:,} in {r['verify_s']} s)"
        baseline = (
            f"hashlib alone {r['hashlib_per_s']:,}/s; reading the records alone "
            f"{r['read_only_per_s']:,}/s"
        )
        return r["variant"], figure, baseline, f"{r['ratio']:.3f}x", ""
    if name == activation_latency.NAME:
        jit, raw, ratio = r["jitaccess_ms"], r["raw_sql_ms"], r["ratio"]
        figure = f"p50 {_ms(jit['p50'])}, p99 {_ms(jit['p99'])}"
        baseline = f"raw SQL: p50 {_ms(raw['p50'])}, p99 {_ms(raw['p99'])}"
        return r["variant"], figure, baseline, f"{ratio['p50']}x / {ratio['p99']}x", ""
    return r.get("variant", ""), "", "", "", ""


def summary_rows(document: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, entry in document.get("benchmarks", {}).items():
        quick = " (quick)" if entry.get("quick") else ""
        for r in entry["results"]:
            series, figure, baseline, ratio, _ = _row(name, r)
            rows.append(
                (
                    TITLES.get(name, name) + quick,
                    series,
                    figure,
                    baseline,
                    ratio,
                    r.get("target", ""),
                    _verdict(r),
                )
            )
    return rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    plain = [tuple(cell.replace("**", "") for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in [tuple(header), *plain]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in plain]
    return "\n".join(out)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def _steps(steps: dict[str, Any]) -> str:
    rows = [
        (step.replace("_", " "), str(s["n"]), _ms(s["p50"]), _ms(s["p99"]), _ms(s["max"]))
        for step, s in steps.items()
    ]
    return markdown_table(("Step", "n", "p50", "p99", "max"), rows)


def detail_sections(document: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    for name, entry in document.get("benchmarks", {}).items():
        for r in entry["results"]:
            parts += _details(name, r)
    return parts


def _details(name: str, r: dict[str, Any]) -> list[str]:
    title = f"**{TITLES.get(name, name)}, {r.get('variant', '')}**"
    if name in (revocation_lag.NAME, activation_latency.NAME) and r.get("breakdown_ms"):
        handled = (
            f"{r['iterations']} activations" if "iterations" in r else f"{r['grants']} expiries"
        )
        passes = (
            f" (the worker loop made {r['worker_passes']} passes for {handled})"
            if "worker_passes" in r
            else ""
        )
        extra = ""
        worker = r.get("worker")
        if worker and worker.get("slowest_pass"):
            slow = worker["slowest_pass"]
            extra = (
                f" Worker passes in the window: p50 {_ms(worker['pass_ms']['p50'])}, p99 "
                f"{_ms(worker['pass_ms']['p99'])}; the slowest took {_ms(slow['ms'])} for "
                f"{slow['claimed']} grant(s)."
            )
        extra += _database_waits(r.get("database_waits"))
        return [
            f"{title} — where the time goes{passes}:{extra}\n",
            _steps(r["breakdown_ms"]) + "\n",
        ]
    if name == throughput.NAME:
        jit = r["jitaccess"]
        lat = jit["request_to_provisioned_ms"]
        return [
            f"{title}: clients made {jit['requests_per_s']:,.0f} requests/s; request to "
            f"provisioned p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])}; CPU a grant: "
            f"jitaccess {jit['jitaccess_cpu_ms_per_grant']} ms, PostgreSQL "
            f"{jit['postgres_cpu_ms_per_grant']} ms; {jit['errors']} errors.\n"
        ]
    if name == check_api.NAME:
        rows: list[tuple[str, ...]] = []
        for server in ("jitaccess", "bare"):
            for i, s in enumerate(r["rounds"][server], 1):
                rows.append(
                    (
                        server,
                        str(i),
                        f"{s['requests_per_s']:,.0f}",
                        _ms(s["latency_ms"]["p50"]),
                        _ms(s["latency_ms"]["p99"]),
                        f"{s['server_cpu_ms_per_request']:.2f} ms",
                        f"{s['postgres_cpu_ms_per_request']:.2f} ms",
                        str(s["errors"]),
                    )
                )
        columns = ("Server", "Round", "req/s", "p50", "p99", "server CPU/req", "PG CPU/req",
                   "errors")  # fmt: skip
        return [
            f"{title} ({r['threads']} client threads, {r['seconds']:.0f} s a round; the best "
            "round of each is compared):\n",
            markdown_table(columns, rows) + "\n",
        ]
    if name in (peak_rss.NAME, peak_rss.FULL_SCALE_NAME):
        points: list[tuple[str, ...]] = [
            (
                f"{p['eligibility_rows']:,}",
                f"{p['policy_json_mb']:.1f} MB",
                f"{p['up_s']} s",
                f"{p['ready_s']} s",
                f"{p['peak_rss_mb']:,.0f} MB",
                f"{p['rss_end_mb']:,.0f} MB",
                f"{p['first_request_ms']} ms ({p['first_request_status']})",
            )
            for p in r["points"]
        ]
        header = ("Eligibility rows", "Stored JSON", "/healthz up", "Policy loaded + 1st pass",
                  "Peak RSS", "RSS at end", "POST /requests")  # fmt: skip
        parts = [f"{title}:\n", markdown_table(header, points) + "\n"]
        trace = r.get("tracemalloc", {})
        timing = r.get("timing", {})
        if timing:
            sec = timing["seconds"]
            parts.append(
                f"Load of {timing['eligibility_rows']:,} rows replayed in a fresh process: "
                + ", ".join(f"{k.replace('_', ' ')} {v} s" for k, v in sec.items())
                + ".\n"
            )
        if trace.get("tracemalloc"):
            tm = trace["tracemalloc"]
            halfway = ", ".join(
                f"{f['file']} {f['mb']} MB" for f in tm["by_file"].get("halfway", [])[:4]
            )
            kept = ", ".join(
                f"{f['file']} {f['mb']} MB" for f in tm["by_file"].get("loaded", [])[:5]
            )
            parts.append(
                f"tracemalloc over the load of {trace['eligibility_rows']:,} rows: peak "
                f"{tm['peak_mb']} MB ({tm['peak_bytes_per_row']:,} bytes a row), kept "
                f"{tm['kept_mb']} MB. Halfway through the rows: {halfway}. Kept after "
                f"the load: {kept}.\n"
            )
        return parts
    if name == cold_start.NAME:
        after = r["ended_after_start_ms"]
        worker = r.get("worker", {})
        return [
            f"{title}: ended p50 {_ms(after['p50'])} / p99 {_ms(after['p99'])} after the "
            f"worker started; {r['worker_passes']} passes (p50 "
            f"{_ms(worker.get('pass_ms', {}).get('p50'))} each); "
            f"{r['still_present_in_target']} accounts left in the target.\n"
        ]
    return []


def _database_waits(waits: dict[str, Any] | None) -> str:
    if not waits:
        return ""
    busy = ", ".join(f"{k} {v}" for k, v in waits["busy_backends_by_wait"].items())
    text = (
        f" PostgreSQL backends of this run, busy on average (by wait): {busy or 'none'}; the "
        f"machine's CPUs were in I/O wait {100 * (waits['machine_iowait_share'] or 0):.1f}% of "
        "the window."
    )
    wal = waits.get("wal") or {}
    if wal:
        text += (
            f" WAL written meanwhile (whole server): {wal['bytes'] / 2**20:.1f} MB, "
            f"{wal['full_page_images']:,} full-page images."
        )
    return text


def missed_notes(document: dict[str, Any]) -> list[str]:
    notes = []
    for name, entry in document.get("benchmarks", {}).items():
        for r in entry["results"]:
            if not r.get("target") or r["met"]:
                continue
            _, figure, _, ratio, _ = _row(name, r)
            notes.append(
                f"- **Target missed**: {TITLES.get(name, name)} ({r['variant']}): {figure}"
                f"{'; ' + ratio if ratio else ''}; target {r['target']}."
            )
    return notes


def results_section(document: dict[str, Any], rows: list[tuple[str, ...]]) -> str:
    m = document["machine"]
    runs = "; ".join(
        f"{name} at {e['ran_at']} ({e['seconds']:.0f}s{', quick' if e['quick'] else ''}; "
        f"other processes used {e.get('other_processes_cpu', {}).get('cores', '?')} "
        f"of {m['cpus']} cores meanwhile)"
        for name, e in document["benchmarks"].items()
    )
    chart = (
        f"![Revocation lag]({CHART.relative_to(HERE).as_posix()})\n\n"
        f"Chart: [`{CHART.relative_to(HERE).as_posix()}`]"
        f"({CHART.relative_to(HERE).as_posix()}) — every grant's lag, cumulative (left) and "
        "over its window (right).\n"
        if CHART.exists()
        else ""
    )
    lines = [
        f"Generated {document['generated_at']} by `{document['command']}` "
        f"(total {document['runtime_s']:.0f}s) on commit `{m['commit']}`.",
        "",
        f"Machine: {m['cpus']} CPUs (`nproc`), {m['cpu_model']}, {m.get('memory', '?')} RAM; "
        f"Python {m['python']}; PostgreSQL {m['postgresql']}; {m['os']}.",
        "",
        f"Runs: {runs}.",
        "",
        markdown_table(SUMMARY_HEADER, rows),
        "",
        *missed_notes(document),
        "",
        chart,
        *detail_sections(document),
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
