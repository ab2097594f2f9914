"""How the range verifier shares out the work: the calling process reads only its own range of
an intact chain; a worker that cannot do its range costs time, never the answer."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jitaccess.adapters.db.audit_reader import AuditRangeReader
from jitaccess.audit.ranges import seq_ranges, verify_stored_chain
from jitaccess.bootstrap import Container
from jitaccess.ports import AuditEntry, StoredAuditChain, StoredRangeReader, StoredRecord
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on

RECORDS = 40


class WatchedChain:
    """A stored chain whose reads in this process are recorded."""

    def __init__(self, chain: StoredAuditChain, reader: StoredRangeReader | None) -> None:
        self.chain, self.reader = chain, reader
        self.reads: list[tuple[int | None, int | None]] = []

    def last_seq(self) -> int | None:
        return self.chain.last_seq()

    def stored(
        self, first: int | None = None, last: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        self.reads.append((first, last))
        return self.chain.stored(first, last)

    def range_reader(self) -> StoredRangeReader | None:
        return self.reader


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Container]:
    with container_on("sqlite", tmp_path) as container:
        with container.uow() as uow:
            already = len(list(uow.audit.iterate()))
            for n in range(already + 1, RECORDS + 1):
                at = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(seconds=n)
                uow.audit.append(AuditEntry(actor="a", action="x", subject=f"s{n}", at=at))
            uow.commit()
        yield container


def test_the_calling_process_reads_only_its_own_range(app: Container) -> None:
    with app.uow.readonly() as uow:
        assert isinstance(uow.audit, StoredAuditChain)
        watched = WatchedChain(uow.audit, uow.audit.range_reader())
        result = verify_stored_chain(watched, workers=3)
        assert result == verify_audit(uow, workers=1)
    assert result.ok and result.records == RECORDS
    assert watched.reads == [(None, seq_ranges(RECORDS, 3)[0][1])]


def test_a_failed_worker_costs_time_not_the_answer(
    app: Container, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = AuditRangeReader("sqlite", (str(tmp_path / "absent" / "audit.db"),), {})
    with app.uow.readonly() as uow:
        assert isinstance(uow.audit, StoredAuditChain)
        watched = WatchedChain(uow.audit, nowhere)
        with caplog.at_level(logging.WARNING, logger="jitaccess.audit"):
            result = verify_stored_chain(watched, workers=3)
        assert result == verify_audit(uow, workers=1)
    assert result.ok and result.records == RECORDS
    first, second, third = seq_ranges(RECORDS, 3)
    assert watched.reads == [(None, first[1]), second, third]
    assert len([r for r in caplog.records if "worker failed" in r.getMessage()]) == 2


def test_a_chain_too_short_for_workers_is_verified_here(app: Container) -> None:
    with app.uow.readonly() as uow:
        assert isinstance(uow.audit, StoredAuditChain)
        watched = WatchedChain(uow.audit, uow.audit.range_reader())
        assert verify_stored_chain(watched).ok  # 40 records: one process
    assert watched.reads == [(None, None)]


@pytest.mark.parametrize(("last", "count"), [(1, 1), (2, 2), (7, 4), (100, 8), (200_001, 2)])
def test_ranges_cover_every_seq_once_in_order(last: int, count: int) -> None:
    ranges = seq_ranges(last, count)
    assert ranges[0][0] == 1 and ranges[-1][1] == last
    assert all(before[1] + 1 == after[0] for before, after in itertools.pairwise(ranges))
    assert all(first <= end for first, end in ranges)
    # The calling process starts at once; the workers start later, so their ranges are shorter.
    assert all(ranges[0][1] - ranges[0][0] >= end - first for first, end in ranges[1:])
