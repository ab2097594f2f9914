"""Verifying a stored chain in seq ranges on parallel processes, each reading its range on a
connection of its own. Every record carries its `prev_hash`, so a range verifies on its own; the
ranges are then joined in order, each one's first link checked against the hash the range before
ended on. The result is the sequential verifier's: a range that does not join cleanly (a bad
record, records missing at its end, a link broken at its start, a worker that failed) is verified
again here from where the chain last held, and that run names the first bad record.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from contextlib import closing

from jitaccess.audit.chain import GENESIS, Verification
from jitaccess.audit.range_worker import segment_from_json
from jitaccess.audit.stored import Segment, verify_stored
from jitaccess.ports import StoredAuditChain, StoredRangeReader

log = logging.getLogger("jitaccess.audit")

#: Below this many records a range does not repay a worker's start-up (~0.1-0.3 s).
MIN_RANGE = 25_000
MAX_WORKERS = 8
#: About what one process verifies while a worker starts.
HEAD_START = 15_000


def verify_stored_chain(chain: StoredAuditChain, workers: int | None = None) -> Verification:
    """Verify the whole chain on `workers` processes, this one included (default: one per CPU,
    as many as the chain's length repays)."""
    last = chain.last_seq()
    reader = chain.range_reader()
    count = 1 if last is None or reader is None else worker_count(workers, last)
    if last is None or reader is None or count <= 1:
        with closing(chain.stored()) as records:
            return _verification(verify_stored(records), GENESIS)
    bounds = seq_ranges(last, count)
    started: list[subprocess.Popen[bytes] | None] = []
    try:
        started = [_start(reader, first, end) for first, end in bounds[1:]]
        with closing(chain.stored(None, bounds[0][1])) as records:
            own = verify_stored(records)
        return _join(chain, own, started, bounds)
    finally:
        for worker in filter(None, started):
            if worker.poll() is None:
                worker.kill()  # the answer came before its range did
            worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()


def _start(reader: StoredRangeReader, first: int, last: int) -> subprocess.Popen[bytes] | None:
    """A worker process for one range (a fresh interpreter that imports only the verifier and
    the reader's driver: not a copy of this process, nor its main module)."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        worker = subprocess.Popen(
            [sys.executable, "-m", "jitaccess.audit.range_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
        )
    except OSError:
        log.warning("audit verification could not start a worker process", exc_info=True)
        return None
    assert worker.stdin is not None
    try:
        with worker.stdin:
            worker.stdin.write(pickle.dumps((reader, first, last)))
    except BrokenPipeError:
        pass  # it died at once: `_finding` tells
    return worker


def _finding(worker: subprocess.Popen[bytes] | None) -> Segment | None:
    if worker is None:
        return None
    assert worker.stdout is not None
    with worker.stdout:
        output = worker.stdout.read()
    worker.wait()
    if worker.returncode == 0:
        try:
            return segment_from_json(json.loads(output))
        except (ValueError, TypeError) as error:
            log.warning("an audit verification worker answered unreadably: %s", error)
            return None  # its range is verified in this process instead: only slower
    log.warning("an audit verification worker failed (exit %s)", worker.returncode)
    return None


def _join(
    chain: StoredAuditChain,
    own: Segment,
    workers: list[subprocess.Popen[bytes] | None],
    bounds: list[tuple[int, int]],
) -> Verification:
    """The ranges' findings in order, as the sequential verifier makes them."""
    expected, head = 1, GENESIS
    for index, (first, last) in enumerate(bounds):
        segment = own if index == 0 else _finding(workers[index - 1])
        if segment is None or not _continues(segment, expected, head):
            # The sequential verifier's run over this range, from where the chain last held.
            with closing(chain.stored(first, last)) as records:
                segment = verify_stored(records, expected, head)
        if segment.first_bad_seq is not None:
            return _verification(segment, head)
        expected, head = segment.next_seq, segment.head or head
    return Verification(True, expected - 1, head=head)


def _continues(segment: Segment, expected: int, head: str) -> bool:
    """Is this range's run the one the sequential verifier makes from (expected, head)?"""
    if segment.first_seq != expected:
        return False
    return segment.first_prev_hash is None or segment.first_prev_hash == head


def _verification(segment: Segment, head_before: str) -> Verification:
    head = segment.head or head_before
    if segment.first_bad_seq is None:
        return Verification(True, segment.next_seq - 1, head=head)
    return Verification(False, segment.next_seq - 1, segment.first_bad_seq, segment.reason, head)


def seq_ranges(last: int, count: int) -> list[tuple[int, int]]:
    """`count` seq ranges covering 1..last: the first, this process's, longer by what a worker
    verifies while it starts; the others of equal length. (The caller reads the first one
    without a lower bound, so a record numbered below 1 is found where the sequential verifier
    finds it.)"""
    head_start = min(HEAD_START, last // (2 * count))
    size = -(-(last - head_start) // count)
    ends = [min(head_start + size * k, last) for k in range(1, count + 1)]
    return [(start + 1, end) for start, end in zip([0, *ends], ends, strict=False) if end > start]


def worker_count(workers: int | None, last: int) -> int:
    """How many processes verify a chain of `last` records (`workers` None: the default)."""
    if workers is not None:
        return max(1, min(workers, last))
    return max(1, min(_cpus(), MAX_WORKERS, last // MIN_RANGE))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
