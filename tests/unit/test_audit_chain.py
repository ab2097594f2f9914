"""The hash-chained audit log: an intact chain verifies; any edit, deletion, reordering or
relinking is found at the first record that no longer fits; exports round-trip."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from jitaccess.audit.chain import (
    GENESIS,
    canonical,
    canonical_parts,
    chain_hash,
    normalised,
    record_from_dict,
    record_to_dict,
    seal,
    verify,
)
from jitaccess.ports import AuditEntry, AuditRecord

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def entry(n: int, **changes: Any) -> AuditEntry:
    base = AuditEntry(
        actor=f"user{n}",
        action="request.created",
        subject=f"req_{n:04d}",
        at=START + timedelta(seconds=n, microseconds=n),
        justification="maintenance window",
        ticket=f"INC-{n}",
        data={"roles": ["demo/read"], "n": n},
    )
    return dataclasses.replace(base, **changes)


def chain(entries: list[AuditEntry]) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for item in entries:
        last = records[-1] if records else None
        records.append(seal(last.seq if last else 0, last.hash if last else GENESIS, item))
    return records


def five() -> list[AuditRecord]:
    return chain([entry(n) for n in range(1, 6)])


def test_intact_chain_verifies() -> None:
    records = five()
    result = verify(records)
    assert result.ok
    assert result.records == 5
    assert result.first_bad_seq is None
    assert result.reason is None
    assert result.head == records[-1].hash


def test_empty_chain_verifies_with_the_genesis_head() -> None:
    result = verify([])
    assert result.ok
    assert result.records == 0
    assert result.head == GENESIS


def test_every_record_links_to_the_one_before() -> None:
    records = five()
    assert records[0].prev_hash == GENESIS
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash


def test_edited_record_is_named_as_edited() -> None:
    records = five()
    original = records[2]
    records[2] = dataclasses.replace(
        original, entry=dataclasses.replace(original.entry, actor="mallory")
    )
    result = verify(records)
    assert not result.ok
    assert result.first_bad_seq == 3
    assert result.reason == "content does not match its hash (edited)"
    assert result.records == 2
    assert result.head == records[1].hash


def test_edit_of_the_data_or_the_time_is_found() -> None:
    records = five()
    data_edit = list(records)
    data_edit[1] = dataclasses.replace(
        records[1], entry=dataclasses.replace(records[1].entry, data={"roles": ["demo/admin"]})
    )
    time_edit = list(records)
    time_edit[4] = dataclasses.replace(
        records[4],
        entry=dataclasses.replace(records[4].entry, at=records[4].entry.at + timedelta(seconds=1)),
    )
    assert verify(data_edit).first_bad_seq == 2
    assert verify(time_edit).first_bad_seq == 5
    assert verify(time_edit).reason == "content does not match its hash (edited)"


def test_edit_that_also_rehashes_the_record_breaks_the_next_link() -> None:
    records = five()
    forged_entry = dataclasses.replace(records[2].entry, outcome="refused")
    records[2] = dataclasses.replace(
        records[2], entry=forged_entry, hash=chain_hash(records[2].prev_hash, 3, forged_entry)
    )
    result = verify(records)
    assert result.first_bad_seq == 4
    assert result.reason == "does not link to the previous record"


def test_deleted_record_is_named_as_missing() -> None:
    records = five()
    del records[2]
    result = verify(records)
    assert not result.ok
    assert result.first_bad_seq == 3
    assert result.reason == "record 3 is missing (found 4 next)"
    assert result.records == 2


def test_deleted_last_record_is_not_detectable_without_the_head() -> None:
    # Truncation only shows against a head kept elsewhere: the verified head changes.
    records = five()
    result = verify(records[:-1])
    assert result.ok
    assert result.head != verify(records).head


def test_swapped_records_are_found_where_the_order_breaks() -> None:
    records = five()
    records[1], records[2] = records[2], records[1]
    result = verify(records)
    assert not result.ok
    assert result.first_bad_seq == 2
    assert result.reason is not None
    assert "record 2" in result.reason
    assert result.records == 1


def test_swapped_contents_under_the_original_numbers_break_the_hash() -> None:
    records = five()
    second, third = records[1], records[2]
    records[1] = dataclasses.replace(second, entry=third.entry)
    records[2] = dataclasses.replace(third, entry=second.entry)
    result = verify(records)
    assert result.first_bad_seq == 2
    assert result.reason == "content does not match its hash (edited)"


def test_duplicated_record_is_named_as_out_of_order() -> None:
    records = five()
    records.insert(2, records[1])
    result = verify(records)
    assert result.first_bad_seq == 3
    assert result.reason == "record 2 is out of order"


def test_changed_prev_hash_is_named_as_a_broken_link() -> None:
    records = five()
    records[3] = dataclasses.replace(records[3], prev_hash="f" * 64)
    result = verify(records)
    assert not result.ok
    assert result.first_bad_seq == 4
    assert result.reason == "does not link to the previous record"
    assert result.records == 3


def test_first_record_must_link_to_genesis() -> None:
    records = five()
    records[0] = dataclasses.replace(records[0], prev_hash="1" * 64)
    assert verify(records).first_bad_seq == 1


def test_export_round_trip_keeps_every_hash_valid() -> None:
    records = chain(
        [
            entry(1),
            entry(2, comment="ünïcode ✓", data={"nested": {"a": [1, 2, None]}, "ok": True}),
            entry(3, outcome="refused", ticket=None, justification=None),
            entry(
                4, at=datetime(2026, 1, 5, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
            ),
        ]
    )
    exported = json.dumps([record_to_dict(r) for r in records])
    restored = [record_from_dict(d) for d in json.loads(exported)]
    assert [r.hash for r in restored] == [r.hash for r in records]
    assert [r.prev_hash for r in restored] == [r.prev_hash for r in records]
    result = verify(restored)
    assert result.ok, result.reason
    assert result.head == records[-1].hash
    assert restored[1].entry.comment == "ünïcode ✓"
    assert restored[2].entry.outcome == "refused"
    assert restored[3].entry.at == records[3].entry.at


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(
    actors=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5),
    data=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    comment=st.none() | st.text(max_size=20),
    micros=st.integers(min_value=0, max_value=10**12),
)
def test_any_chain_survives_an_export_round_trip(
    actors: list[str], data: dict[str, Any], comment: str | None, micros: int
) -> None:
    at = START + timedelta(microseconds=micros)
    records = chain(
        [
            AuditEntry(
                actor=a, action="grant.expired", subject="grt_1", at=at, comment=comment, data=data
            )
            for a in actors
        ]
    )
    restored = [record_from_dict(json.loads(json.dumps(record_to_dict(r)))) for r in records]
    assert verify(restored).ok
    assert verify(restored).head == records[-1].hash


@given(index=st.integers(min_value=0, max_value=4), actor=st.text(min_size=1, max_size=8))
def test_any_edit_of_any_record_is_found_at_that_record(index: int, actor: str) -> None:
    records = five()
    target = records[index]
    if target.entry.actor == actor:
        actor += "x"
    records[index] = dataclasses.replace(
        target, entry=dataclasses.replace(target.entry, actor=actor)
    )
    result = verify(records)
    assert not result.ok
    assert result.first_bad_seq == index + 1


_text = st.text(max_size=40)


@given(
    actor=_text,
    subject=_text,
    comment=st.none() | _text,
    data=st.dictionaries(_text, json_values, max_size=4),
    seq=st.integers(min_value=1, max_value=10**15),
)
def test_canonical_parts_surround_the_record_number(
    actor: str, subject: str, comment: str | None, data: dict[str, Any], seq: int
) -> None:
    # PostgreSQL seals records from these parts (audit_repository.py): whatever the strings and
    # data hold (a "seq" key of their own, quotes, the marker itself), the parts around the
    # number give exactly the bytes Python hashes, so both compute the same hash.
    kept = normalised(
        entry(1, actor=actor, subject=subject + ',"seq":0,"subject":', comment=comment, data=data)
    )
    before, after = canonical_parts(kept)
    assert before + str(seq).encode() + after == canonical(seq, kept)
    digest = hashlib.sha256((GENESIS + before.decode() + str(seq) + after.decode()).encode())
    assert digest.hexdigest() == chain_hash(GENESIS, seq, kept)
