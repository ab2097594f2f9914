"""Verifying the chain as the database returns it: raw rows (`ports.StoredRecord`), `data` as its
stored JSON text, `at` already in the hashed form. Same hashes and same findings as `chain.verify`
over the same records, without building domain objects or sending `data` through JSON twice.
"""

from __future__ import annotations

import hashlib
import json
from _json import encode_basestring_ascii as _escape
from _json import make_encoder, make_scanner
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by worker processes: only what they need (see range_worker)
    from jitaccess.ports import StoredRecord

GENESIS = "0" * 64
BROKEN_LINK = "does not link to the previous record"
EDITED = "content does not match its hash (edited)"


def missing_or_out_of_order(expected_seq: int, found_seq: int) -> str:
    if found_seq > expected_seq:
        return f"record {expected_seq} is missing (found {found_seq} next)"
    return f"record {found_seq} is out of order"


def _not_json(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


# json.dumps(..., sort_keys=True, separators=(",", ":")) without building an encoder per call.
_sorted_json = make_encoder(None, _not_json, _escape, None, ":", ",", True, False, True)
# json.decoder makes its scanner of a JSONDecoder just so.
_scan_json = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_BODY = (
    '{"action":%s,"actor":%s,"at":"%s","comment":%s,"data":%s,"justification":%s,'
    '"outcome":%s,"seq":%d,"subject":%s,"ticket":%s}'
)


def stored_canonical(record: StoredRecord) -> bytes | None:
    """`chain.canonical` of a stored record: the bytes its hash covers; None when what is
    stored cannot be what was hashed (`at` not a time, `data` not JSON)."""
    seq, at, actor, action, subject, outcome, justification, ticket, comment, data = record[:10]
    if at is None:
        return None
    try:
        # json.loads without its wrapping, for the text SQLAlchemy writes (no outer spaces).
        value, end = _scan_json(data, 0)
        if end != len(data) or type(value) is not dict or type(seq) is not int:
            raise TypeError("not a record as written")
        body = _BODY % (
            _escape(action),  # a str only: any other type goes the general way below
            _escape(actor),
            at,
            "null" if comment is None else _escape(comment),
            "".join(_sorted_json(value, 0)),
            "null" if justification is None else _escape(justification),
            _escape(outcome),
            seq,
            _escape(subject),
            "null" if ticket is None else _escape(ticket),
        )
        return body.encode()
    except (TypeError, ValueError, StopIteration):
        return _canonical_of_any(record)


def _canonical_of_any(record: StoredRecord) -> bytes | None:
    """What the domain-object verifier hashed for a record of any shape (a SQLite column can
    hold any type): `data` through `dict()` and JSON, everything else through `default=str`."""
    seq, at, actor, action, subject, outcome, justification, ticket, comment, data = record[:10]
    try:
        fields = json.loads(json.dumps(dict(json.loads(data)), default=str))
    except (TypeError, ValueError):
        return None
    body = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "subject": subject,
        "outcome": outcome,
        "justification": justification,
        "ticket": ticket,
        "comment": comment,
        "data": fields,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class Segment:
    """What verifying a run of stored records from `first_seq` found. `next_seq` and `head`:
    the seq expected next and the hash of the last record that fit (`head` None: no record
    fit and none was given). `first_prev_hash`: the first record's link, when the run was
    verified without knowing the hash before it (the caller checks that link)."""

    first_seq: int
    next_seq: int
    head: str | None
    first_prev_hash: object = None
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_stored(
    records: Iterable[StoredRecord], first_seq: int = 1, prev_hash: str | None = GENESIS
) -> Segment:
    """`chain.verify` over stored records that should start at `first_seq` after `prev_hash`.
    With `prev_hash` None, the first record's link is taken as given and reported."""
    expected, head, first_link = first_seq, prev_hash, None
    canonical_of, sha256 = stored_canonical, hashlib.sha256  # (locals: this loop is the cost)
    for record in records:
        seq, link, record_hash = record[0], record[10], record[11]
        if seq != expected:
            reason = missing_or_out_of_order(expected, seq)
            return Segment(first_seq, expected, head, first_link, expected, reason)
        if head is None:
            first_link = link
            if type(link) is not str or not link.isascii():
                return Segment(first_seq, expected, None, link, seq, BROKEN_LINK)
            head = link
        elif link != head:
            return Segment(first_seq, expected, head, first_link, seq, BROKEN_LINK)
        body = canonical_of(record)
        if body is None or sha256(head.encode("ascii") + body).hexdigest() != record_hash:
            return Segment(first_seq, expected, head, first_link, seq, EDITED)
        head, expected = record_hash, expected + 1
    return Segment(first_seq, expected, head, first_link)
