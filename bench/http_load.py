"""A small closed-loop HTTP load generator, run as its own process so its CPU and GIL are not the
server's: `threads` keep-alive connections each send GET requests back to back for a while.

`python -m bench.http_load URL --token T [--token T2 …] --threads 8 --seconds 8 --warmup 2`
prints one JSON object: requests, errors, requests/s and latency percentiles (ms) of the timed
part; the warm-up is discarded.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence

import httpx

from bench.setup import summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_load", description=__doc__)
    parser.add_argument("url", help="full URL to GET, query string included")
    parser.add_argument("--token", action="append", default=[], help="bearer token(s), cycled")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    print(json.dumps(load(args.url, args.token, args.threads, args.seconds, args.warmup)))
    return 0


def load(
    url: str, tokens: Sequence[str], threads: int, seconds: float, warmup: float
) -> dict[str, object]:
    begin = time.perf_counter() + warmup
    end = begin + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    statuses: list[Counter[int]] = [Counter() for _ in range(threads)]
    failures = [0] * threads
    sent_all = [0] * threads  # warm-up included, for CPU per request

    def client(i: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"} if tokens else {}
        with httpx.Client(headers=headers, timeout=30.0) as http:
            while True:
                sent = time.perf_counter()
                if sent >= end:
                    return
                try:
                    status = http.get(url).status_code
                except httpx.HTTPError:
                    status = 0
                done = time.perf_counter()
                sent_all[i] += 1
                if sent >= begin:
                    latencies[i].append((done - sent) * 1000)
                    statuses[i][status] += 1
                    if status != 200:
                        failures[i] += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    every = [value for part in latencies for value in part]
    status_counts: Counter[int] = Counter()
    for part in statuses:
        status_counts.update(part)
    return {
        "requests": len(every),
        "requests_with_warmup": sum(sent_all),
        "errors": sum(failures),
        "statuses": {str(k): v for k, v in sorted(status_counts.items())},
        "seconds": seconds,
        "requests_per_s": round(len(every) / seconds, 1),
        "latency_ms": summary(every),
        "threads": threads,
    }


if __name__ == "__main__":
    raise SystemExit(main())
