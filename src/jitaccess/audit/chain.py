"""Hashing and verifying the audit chain; pure functions so anyone can verify an export offline.

hash(n) = sha256(hash(n-1) || canonical JSON of record n), with hash(0) = 64 zeros. Editing,
deleting or reordering any record breaks the link at that record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jitaccess.audit import stored
from jitaccess.audit.stored import BROKEN_LINK, EDITED, missing_or_out_of_order
from jitaccess.ports import AuditEntry, AuditRecord

GENESIS = stored.GENESIS


def format_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalised(entry: AuditEntry) -> AuditEntry:
    """`entry` with its data as it is stored and read back: through JSON once (tuples become
    lists, keys strings, datetimes and other values their `str`). Sealing does this, so what
    is stored is exactly what was hashed, and a verifier hashes what it reads."""
    data = json.loads(json.dumps(dict(entry.data), default=str))
    return dataclasses.replace(entry, data=data)


def record_fields(seq: int, entry: AuditEntry) -> dict[str, Any]:
    """What a record consists of, as stored, hashed and exported (time left to the caller)."""
    return {
        "seq": seq,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "outcome": entry.outcome,
        "justification": entry.justification,
        "ticket": entry.ticket,
        "comment": entry.comment,
        "data": dict(entry.data),
    }


def canonical(seq: int, entry: AuditEntry) -> bytes:
    """The bytes hashed for a record: its fields, data as stored (see `normalised`), as
    compact JSON with sorted keys, ASCII only."""
    body = record_fields(seq, entry) | {"at": format_time(entry.at)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


# Where a record's number sits in its canonical JSON: keys are sorted, so "seq" is followed by
# "subject", and it is the last such pair (quotes inside strings are escaped).
_SEQ_AT = b',"seq":0,"subject":'


def canonical_parts(entry: AuditEntry) -> tuple[bytes, bytes]:
    """The canonical bytes of a *normalised* entry around its record number:
    `canonical(seq, entry) == before + str(seq).encode() + after` for every seq. PostgreSQL
    seals records with these under the audit head's lock (audit_repository.py), so the lock is
    held for the server's work only."""
    whole = canonical(0, entry)
    at = whole.rindex(_SEQ_AT) + len(b',"seq":')
    return whole[:at], whole[at + 1 :]


def chain_hash(prev_hash: str, seq: int, entry: AuditEntry) -> str:
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical(seq, entry))
    return digest.hexdigest()


def seal(prev_seq: int, prev_hash: str, entry: AuditEntry) -> AuditRecord:
    """The record that follows (prev_seq, prev_hash); a chain starts from (0, GENESIS). Its
    entry is `normalised`: store that one."""
    seq = prev_seq + 1
    kept = normalised(entry)
    return AuditRecord(
        seq=seq, entry=kept, prev_hash=prev_hash, hash=chain_hash(prev_hash, seq, kept)
    )


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head: str = GENESIS

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "head": self.head,
        }


def verify(records: Iterable[AuditRecord]) -> Verification:
    """Recompute the chain in order; name the first record that does not fit."""
    expected_seq, prev_hash, count = 1, GENESIS, 0
    for record in records:
        if record.seq != expected_seq:
            reason = missing_or_out_of_order(expected_seq, record.seq)
            return Verification(False, count, expected_seq, reason, prev_hash)
        if record.prev_hash != prev_hash:
            return Verification(False, count, record.seq, BROKEN_LINK, prev_hash)
        if chain_hash(prev_hash, record.seq, record.entry) != record.hash:
            return Verification(False, count, record.seq, EDITED, prev_hash)
        prev_hash, expected_seq, count = record.hash, expected_seq + 1, count + 1
    return Verification(True, count, head=prev_hash)


def record_to_dict(record: AuditRecord) -> dict[str, Any]:
    return record_fields(record.seq, record.entry) | {
        "at": format_time(record.entry.at),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def record_from_dict(data: Mapping[str, Any]) -> AuditRecord:
    at = datetime.strptime(str(data["at"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    entry = AuditEntry(
        actor=str(data["actor"]),
        action=str(data["action"]),
        subject=str(data["subject"]),
        at=at,
        outcome=str(data.get("outcome", "ok")),
        justification=data.get("justification"),
        ticket=data.get("ticket"),
        comment=data.get("comment"),
        data=dict(data.get("data") or {}),
    )
    return AuditRecord(
        seq=int(data["seq"]), entry=entry, prev_hash=str(data["prev_hash"]), hash=str(data["hash"])
    )
