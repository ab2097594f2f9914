"""The audit chain verified on real storage: the verifier split into seq ranges on worker
processes finds exactly what the sequential one finds (ok, records, first bad seq, reason,
head) for every kind of tampering, and both agree with the domain-object verifier; the hashes
pinned in tests/unit/test_audit_hash_pinned.py survive a round trip through the database."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from jitaccess.audit.chain import GENESIS, Verification, chain_hash, verify
from jitaccess.audit.ranges import seq_ranges
from jitaccess.bootstrap import Container
from jitaccess.ports import AuditEntry
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on
from support.pinned_audit import ENTRIES, PINNED_HASHES


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


RECORDS = 60
WORKERS = 3
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def app(kind: str, tmp_path: Path) -> Iterator[Container]:
    with container_on(kind, tmp_path) as container:
        yield container


def append(app: Container, entries: list[AuditEntry], per_commit: int = 7) -> None:
    """Through the product's write path, several records a transaction."""
    for start in range(0, len(entries), per_commit):
        with app.uow() as uow:
            for entry in entries[start : start + per_commit]:
                uow.audit.append(entry)
            uow.commit()


def chain_of(app: Container, total: int = RECORDS) -> list[tuple[int, int]]:
    """`total` records in all (after the policy's own); the ranges a 3-way verification uses."""
    with app.uow.readonly() as uow:
        already = len(list(uow.audit.iterate()))
    entries = [
        AuditEntry(
            actor=f"user{n % 7}",
            action="grant.expired",
            subject=f"grt_{n:04d}",
            at=START + timedelta(seconds=n, microseconds=n * 37 % 1_000_000),
            justification="rotation" if n % 3 else None,
            comment="ünïcode ✓" if n % 5 == 0 else None,
            data={"principal": f"user{n % 7}", "lag_ms": n, "nested": {"b": [n, None], "a": n}},
        )
        for n in range(already + 1, total + 1)  # n: the record's seq
    ]
    append(app, entries)
    return seq_ranges(total, WORKERS)


def verifications(app: Container) -> tuple[Verification, Verification, Verification]:
    """(sequential, in ranges on worker processes, over domain objects)."""
    with app.uow.readonly() as uow:
        sequential = verify_audit(uow, workers=1)
        ranged = verify_audit(uow, workers=WORKERS)
        domain = verify(uow.audit.iterate())
    return sequential, ranged, domain


def assert_all_find(app: Container, expected: Verification) -> None:
    sequential, ranged, domain = verifications(app)
    assert sequential == expected
    assert ranged == expected
    assert domain == expected


def tamper(app: Container, *statements: str) -> None:
    with app.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def hash_of(app: Container, seq: int) -> str:
    with app.engine.connect() as conn:
        return str(conn.execute(text(f"SELECT hash FROM audit_log WHERE seq = {seq}")).scalar())


@pytest.fixture(autouse=True)
def no_worker_fell_back(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A worker that fails is covered by verifying its range in-process; here none may."""
    with caplog.at_level(logging.WARNING, logger="jitaccess.audit"):
        yield
    assert not [r for r in caplog.records if r.name == "jitaccess.audit"]


def test_intact_chain_verifies_the_same_in_ranges(app: Container) -> None:
    chain_of(app)
    assert_all_find(app, Verification(True, RECORDS, head=hash_of(app, RECORDS)))


def test_empty_chain_verifies_with_the_genesis_head(app: Container) -> None:
    tamper(app, "DELETE FROM audit_log")
    with app.uow.readonly() as uow:
        assert verify_audit(uow) == Verification(True, 0, head=GENESIS)
        assert verify_audit(uow, workers=WORKERS) == Verification(True, 0, head=GENESIS)


def edited(seq: int) -> str:
    return f"UPDATE audit_log SET actor = 'mallory' WHERE seq = {seq}"


def relinked(seq: int) -> str:
    return f"UPDATE audit_log SET prev_hash = '{'f' * 64}' WHERE seq = {seq}"


def deleted(seq: int) -> str:
    return f"DELETE FROM audit_log WHERE seq = {seq}"


EDITED = "content does not match its hash (edited)"
BROKEN = "does not link to the previous record"

# (statements, given the ranges; the first bad seq; the reason, given that seq)
Case = tuple[
    Callable[[list[tuple[int, int]]], list[str]], Callable[[list[tuple[int, int]]], int], str
]
CASES: dict[str, Case] = {
    "edited inside a range": (lambda r: [edited(r[1][0] + 3)], lambda r: r[1][0] + 3, EDITED),
    "edited first of a range": (lambda r: [edited(r[1][0])], lambda r: r[1][0], EDITED),
    "edited last of a range": (lambda r: [edited(r[0][1])], lambda r: r[0][1], EDITED),
    "edited last record": (lambda r: [edited(RECORDS)], lambda r: RECORDS, EDITED),
    "edited first record": (lambda r: [edited(1)], lambda r: 1, EDITED),
    "link broken at a range's start": (lambda r: [relinked(r[2][0])], lambda r: r[2][0], BROKEN),
    "link broken inside a range": (
        lambda r: [relinked(r[0][1] - 2)],
        lambda r: r[0][1] - 2,
        BROKEN,
    ),
    "edited in two ranges: the first wins": (
        lambda r: [edited(r[2][0] + 1), edited(r[1][0] + 2)],
        lambda r: r[1][0] + 2,
        EDITED,
    ),
    "broken in the first range and edited in the last": (
        lambda r: [edited(r[2][1]), relinked(5)],
        lambda r: 5,
        BROKEN,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampering_is_named_the_same_in_ranges(app: Container, case: str) -> None:
    ranges = chain_of(app)
    statements, bad, reason = CASES[case]
    tamper(app, *statements(ranges))
    seq = bad(ranges)
    head = hash_of(app, seq - 1) if seq > 1 else GENESIS
    assert_all_find(app, Verification(False, seq - 1, seq, reason, head))


@pytest.mark.parametrize("where", ["inside", "first of a range", "last of a range"])
def test_deleted_record_is_named_the_same_in_ranges(app: Container, where: str) -> None:
    ranges = chain_of(app)
    seq = {"inside": ranges[1][0] + 4, "first of a range": ranges[2][0]}.get(where, ranges[1][1])
    tamper(app, deleted(seq))
    reason = f"record {seq} is missing (found {seq + 1} next)"
    assert_all_find(app, Verification(False, seq - 1, seq, reason, hash_of(app, seq - 1)))


def test_a_whole_range_deleted_is_named_at_its_first_record(app: Container) -> None:
    ranges = chain_of(app)
    first, last = ranges[1]
    tamper(app, f"DELETE FROM audit_log WHERE seq BETWEEN {first} AND {last}")
    reason = f"record {first} is missing (found {last + 1} next)"
    assert_all_find(app, Verification(False, first - 1, first, reason, hash_of(app, first - 1)))


def test_the_last_records_deleted_leave_a_shorter_chain_that_verifies(app: Container) -> None:
    # Truncation only shows against a head kept elsewhere (see the unit tests).
    chain_of(app)
    tamper(app, f"DELETE FROM audit_log WHERE seq > {RECORDS - 3}")
    assert_all_find(app, Verification(True, RECORDS - 3, head=hash_of(app, RECORDS - 3)))


def test_swapped_records_are_named_where_the_order_breaks(app: Container) -> None:
    ranges = chain_of(app)
    seq = ranges[1][0]  # across the boundary: the last of range 1 and the first of range 2
    tamper(
        app,
        f"UPDATE audit_log SET seq = -1 WHERE seq = {seq - 1}",
        f"UPDATE audit_log SET seq = {seq - 1} WHERE seq = {seq}",
        f"UPDATE audit_log SET seq = {seq} WHERE seq = -1",
    )
    assert_all_find(app, Verification(False, seq - 2, seq - 1, BROKEN, hash_of(app, seq - 2)))


def test_a_record_numbered_below_one_is_out_of_order(app: Container) -> None:
    chain_of(app)
    columns = "at, actor, action, subject, outcome, justification, ticket, comment, data"
    tamper(
        app,
        f"INSERT INTO audit_log (seq, {columns}, prev_hash, hash) "
        f"SELECT 0, {columns}, prev_hash, hash FROM audit_log WHERE seq = 1",
    )
    sequential, ranged, domain = verifications(app)
    assert sequential == ranged == Verification(False, 0, 1, "record 0 is out of order", GENESIS)
    # The domain objects are read from seq 1 on: that verifier never saw record 0.
    assert domain.ok


def test_an_edit_rehashed_by_the_forger_breaks_the_next_link(app: Container) -> None:
    ranges = chain_of(app)
    seq = ranges[1][1]  # the next record is the first of the next range
    with app.uow.readonly() as uow:
        [record] = uow.audit.records(after=seq - 1, limit=1)
    forged = chain_hash(record.prev_hash, seq, dataclasses.replace(record.entry, actor="mallory"))
    tamper(app, f"UPDATE audit_log SET actor = 'mallory', hash = '{forged}' WHERE seq = {seq}")
    assert_all_find(app, Verification(False, seq, seq + 1, BROKEN, forged))


def set_data(conn: Connection, kind: str, seq: int, value: str) -> None:
    cast = "CAST(:value AS json)" if kind == "postgres" else ":value"
    conn.execute(text(f"UPDATE audit_log SET data = {cast} WHERE seq = {seq}"), {"value": value})


def test_data_stored_in_another_json_layout_still_verifies(app: Container, kind: str) -> None:
    # What is hashed is the value: another key order or spacing of the same JSON is no edit.
    chain_of(app)
    with app.engine.begin() as conn:
        set_data(
            conn,
            kind,
            30,
            ' { "nested" : {"a": 30, "b": [30, null]},"lag_ms":30,"principal":"user2" } ',
        )
    assert_all_find(app, Verification(True, RECORDS, head=hash_of(app, RECORDS)))


def test_an_edited_data_value_is_named(app: Container, kind: str) -> None:
    chain_of(app)
    with app.engine.begin() as conn:
        set_data(conn, kind, 31, '{"principal": "user3", "lag_ms": 0, "nested": {"a": 31}}')
    assert_all_find(app, Verification(False, 30, 31, EDITED, hash_of(app, 30)))


def test_times_before_year_1000_and_without_microseconds_verify(app: Container) -> None:
    chain_of(app, total=RECORDS - 2)
    append(
        app,
        [
            AuditEntry(actor="a", action="x", subject="s", at=datetime(999, 1, 2, tzinfo=UTC)),
            AuditEntry(actor="a", action="x", subject="s", at=datetime(2026, 1, 2, tzinfo=UTC)),
        ],
    )
    assert_all_find(app, Verification(True, RECORDS, head=hash_of(app, RECORDS)))


def test_pinned_records_keep_their_hashes_in_the_database(app: Container) -> None:
    tamper(app, "DELETE FROM audit_log", "DELETE FROM audit_head")
    append(app, ENTRIES, per_commit=3)
    with app.uow.readonly() as uow:
        stored = [r.hash for r in uow.audit.iterate()]
    assert stored == PINNED_HASHES
    assert_all_find(app, Verification(True, len(ENTRIES), head=PINNED_HASHES[-1]))


# --- SQLite holds what any writer put there ----------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite"])  # a PostgreSQL timestamp has one layout
def test_sqlite_time_in_another_layout_is_read_as_sqlalchemy_reads_it(
    app: Container, kind: str
) -> None:
    chain_of(app, total=RECORDS - 1)
    append(app, [AuditEntry(actor="a", action="x", subject="s", at=START)])  # no microseconds
    tamper(app, f"UPDATE audit_log SET at = '2026-01-05 09:00:00' WHERE seq = {RECORDS}")
    assert_all_find(app, Verification(True, RECORDS, head=hash_of(app, RECORDS)))
    tamper(app, f"UPDATE audit_log SET at = '2026-01-05T09:00:01' WHERE seq = {RECORDS}")
    assert_all_find(app, Verification(False, RECORDS - 1, RECORDS, EDITED, hash_of(app, 59)))


@pytest.mark.parametrize("kind", ["sqlite"])  # PostgreSQL columns are typed
def test_sqlite_values_of_other_types_are_edits(app: Container, kind: str) -> None:
    ranges = chain_of(app)
    seq = ranges[1][0]
    tamper(app, f"UPDATE audit_log SET actor = 5 WHERE seq = {seq}")
    assert_all_find(app, Verification(False, seq - 1, seq, EDITED, hash_of(app, seq - 1)))
    # Unreadable data or time: the domain verifier cannot even read the record; these name it.
    tamper(
        app,
        f"UPDATE audit_log SET actor = 'user0', data = 'not json' WHERE seq = {seq}",
        f"UPDATE audit_log SET at = x'00' WHERE seq = {seq + 5}",
        f"UPDATE audit_log SET prev_hash = 7 WHERE seq = {ranges[2][0]}",
    )
    with app.uow.readonly() as uow:
        sequential = verify_audit(uow, workers=1)
        assert verify_audit(uow, workers=WORKERS) == sequential
    assert (sequential.first_bad_seq, sequential.reason) == (seq, EDITED)
    tamper(app, f"DELETE FROM audit_log WHERE seq <= {seq + 5}")
    with app.uow.readonly() as uow:
        sequential = verify_audit(uow, workers=1)
        assert verify_audit(uow, workers=WORKERS) == sequential
    assert (sequential.first_bad_seq, sequential.reason) == (
        1,
        f"record 1 is missing (found {seq + 6} next)",
    )
