"""The hash of a record never changes: the pinned records (tests/support/pinned_audit.py) hash
as the code of commit 22bfe99 hashed them, sealed, verified, exported and read back as stored."""

from __future__ import annotations

import json
from pathlib import Path

from jitaccess.audit.chain import (
    GENESIS,
    canonical,
    chain_hash,
    format_time,
    record_from_dict,
    record_to_dict,
    seal,
    verify,
)
from jitaccess.audit.stored import Segment, stored_canonical, verify_stored
from jitaccess.ports import AuditRecord, StoredRecord
from support.pinned_audit import ENTRIES, PINNED_CANONICAL, PINNED_HASHES


def sealed() -> list[AuditRecord]:
    records: list[AuditRecord] = []
    seq, prev_hash = 0, GENESIS
    for item in ENTRIES:
        record = seal(seq, prev_hash, item)
        records.append(record)
        seq, prev_hash = record.seq, record.hash
    return records


def test_sealing_gives_the_pinned_hashes() -> None:
    assert [r.hash for r in sealed()] == PINNED_HASHES


def test_the_sealed_record_hashes_to_the_pinned_canonical_form() -> None:
    for record, expected in zip(sealed(), PINNED_CANONICAL, strict=True):
        assert canonical(record.seq, record.entry) == expected
        assert chain_hash(record.prev_hash, record.seq, record.entry) == record.hash


def test_pinned_chain_verifies_with_the_pinned_head() -> None:
    result = verify(sealed())
    assert (result.ok, result.records, result.head) == (True, 7, PINNED_HASHES[-1])


def test_pinned_chain_verifies_after_an_export_round_trip() -> None:
    lines = [json.dumps(record_to_dict(r)) for r in sealed()]
    restored = [record_from_dict(json.loads(line)) for line in lines]
    assert [r.hash for r in restored] == PINNED_HASHES
    result = verify(restored)
    assert (result.ok, result.head) == (True, PINNED_HASHES[-1])


#: `jitaccess audit export` of the records above, written by the code of commit 22bfe99.
EXPORTED = Path(__file__).parent / "audit_fixtures" / "export_22bfe99.jsonl"


def test_a_file_exported_before_still_verifies() -> None:
    lines = EXPORTED.read_text().splitlines()
    result = verify(record_from_dict(json.loads(line)) for line in lines)
    assert (result.ok, result.records, result.head) == (True, 7, PINNED_HASHES[-1])


def stored_rows(records: list[AuditRecord]) -> list[StoredRecord]:
    """The records as a database returns them to the verifier (data as SQLAlchemy writes it)."""
    return [
        (
            r.seq,
            format_time(r.entry.at),
            r.entry.actor,
            r.entry.action,
            r.entry.subject,
            r.entry.outcome,
            r.entry.justification,
            r.entry.ticket,
            r.entry.comment,
            json.dumps(dict(r.entry.data)),
            r.prev_hash,
            r.hash,
        )
        for r in records
    ]


def test_stored_records_hash_to_the_pinned_canonical_form() -> None:
    for row, expected in zip(stored_rows(sealed()), PINNED_CANONICAL, strict=True):
        assert stored_canonical(row) == expected


def test_stored_records_verify_with_the_pinned_head() -> None:
    segment = verify_stored(stored_rows(sealed()))
    assert segment == Segment(first_seq=1, next_seq=8, head=PINNED_HASHES[-1])
