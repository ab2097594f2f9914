"""Repositories over SQLAlchemy Core: domain objects in, domain objects out."""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, func, select, update

from jitaccess.adapters.db.tables import (
    api_tokens,
    audit_head,
    audit_log,
    grants,
    policy_versions,
    requests,
)
from jitaccess.audit.chain import GENESIS, seal
from jitaccess.domain.model import (
    HOLDING_GRANT_STATES,
    LIVE_GRANT_STATES,
    Approval,
    Decision,
    EndReason,
    Grant,
    GrantState,
    Request,
    RequestState,
    StageMark,
)
from jitaccess.ports import ApiToken, AuditEntry, AuditRecord, PolicyVersion


def _iso(value: datetime) -> str:
    return value.isoformat()


# --- requests ---------------------------------------------------------------------------------


def _request_row(request: Request) -> dict[str, Any]:
    return {
        "id": request.id,
        "requester": request.requester,
        "roles": list(request.roles),
        "duration_s": int(request.duration.total_seconds()),
        "justification": request.justification,
        "ticket": request.ticket,
        "created_at": request.created_at,
        "policy_version": request.policy_version,
        "start_at": request.start_at,
        "state": request.state.value,
        "pending_until": request.pending_until,
        "decided_at": request.decided_at,
        "approvals": [
            {
                "approver": a.approver,
                "decision": a.decision.value,
                "comment": a.comment,
                "at": _iso(a.at),
                "counted_for": [[m.role, m.stage] for m in a.counted_for],
            }
            for a in request.approvals
        ],
        "grant_ids": list(request.grant_ids),
        "extends_grant_id": request.extends_grant_id,
        "due_at": request.due_at,
    }


def _request_from(row: Row[Any]) -> Request:
    m = row._mapping
    return Request(
        id=m["id"],
        requester=m["requester"],
        roles=tuple(m["roles"]),
        duration=timedelta(seconds=m["duration_s"]),
        justification=m["justification"],
        ticket=m["ticket"],
        created_at=m["created_at"],
        policy_version=m["policy_version"],
        start_at=m["start_at"],
        state=RequestState(m["state"]),
        pending_until=m["pending_until"],
        decided_at=m["decided_at"],
        approvals=[
            Approval(
                approver=a["approver"],
                decision=Decision(a["decision"]),
                comment=a["comment"],
                at=datetime.fromisoformat(a["at"]),
                counted_for=tuple(StageMark(r, s) for r, s in a["counted_for"]),
            )
            for a in m["approvals"]
        ],
        grant_ids=list(m["grant_ids"]),
        extends_grant_id=m["extends_grant_id"],
    )


class SqlRequests:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, request: Request) -> None:
        self.conn.execute(requests.insert().values(**_request_row(request)))

    def get(self, request_id: str, *, for_update: bool = False) -> Request | None:
        query = select(requests).where(requests.c.id == request_id)
        if for_update:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return _request_from(row) if row else None

    def save(self, request: Request) -> None:
        values = _request_row(request)
        del values["id"]
        self.conn.execute(update(requests).where(requests.c.id == request.id).values(**values))

    def list(
        self, *, requester: str | None = None, state: str | None = None, limit: int = 200
    ) -> builtins.list[Request]:
        query = select(requests).order_by(requests.c.created_at.desc()).limit(limit)
        if requester is not None:
            query = query.where(requests.c.requester == requester)
        if state is not None:
            query = query.where(requests.c.state == state)
        return [_request_from(r) for r in self.conn.execute(query)]

    def due(self, now: datetime, limit: int) -> builtins.list[Request]:
        query = (
            select(requests)
            .where(requests.c.due_at <= now)
            .order_by(requests.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_request_from(r) for r in self.conn.execute(query)]


# --- grants -----------------------------------------------------------------------------------

_GRANT_FIELDS = (
    "id",
    "request_id",
    "principal",
    "role",
    "target",
    "access_key",
    "starts_at",
    "ends_at",
    "created_at",
    "ended_at",
    "ended_by",
    "end_comment",
    "attempts",
    "next_attempt_at",
    "failing_since",
    "flagged_at",
    "last_error",
)


def _grant_row(grant: Grant) -> dict[str, Any]:
    row = {name: getattr(grant, name) for name in _GRANT_FIELDS}
    row["state"] = grant.state.value
    row["end_reason"] = grant.end_reason.value if grant.end_reason else None
    row["due_at"] = grant.due_at
    return row


def _grant_from(row: Row[Any]) -> Grant:
    m = row._mapping
    values = {name: m[name] for name in _GRANT_FIELDS}
    return Grant(
        **values,
        state=GrantState(m["state"]),
        end_reason=EndReason(m["end_reason"]) if m["end_reason"] else None,
    )


_GRANT_COLUMNS = [grants.c[name] for name in (*_GRANT_FIELDS, "state", "end_reason")]


class SqlGrants:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _select(self) -> Any:
        return select(*_GRANT_COLUMNS)

    def add(self, grant: Grant) -> None:
        self.conn.execute(grants.insert().values(**_grant_row(grant)))

    def get(self, grant_id: str, *, for_update: bool = False) -> Grant | None:
        query = self._select().where(grants.c.id == grant_id)
        if for_update:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return _grant_from(row) if row else None

    def save(self, grant: Grant) -> None:
        values = _grant_row(grant)
        del values["id"]
        self.conn.execute(update(grants).where(grants.c.id == grant.id).values(**values))

    def list(
        self,
        *,
        principal: str | None = None,
        state: str | None = None,
        request_id: str | None = None,
        limit: int = 200,
    ) -> builtins.list[Grant]:
        query = self._select().order_by(grants.c.created_at.desc()).limit(limit)
        if principal is not None:
            query = query.where(grants.c.principal == principal)
        if state is not None:
            query = query.where(grants.c.state == state)
        if request_id is not None:
            query = query.where(grants.c.request_id == request_id)
        return [_grant_from(r) for r in self.conn.execute(query)]

    def holding(self, access_key: str, *, exclude: str) -> builtins.list[Grant]:
        query = self._select().where(
            grants.c.access_key == access_key,
            grants.c.id != exclude,
            grants.c.state.in_([s.value for s in HOLDING_GRANT_STATES]),
        )
        return [_grant_from(r) for r in self.conn.execute(query)]

    def live_for(self, principal: str, role: str) -> builtins.list[Grant]:
        query = self._select().where(
            grants.c.principal == principal,
            grants.c.role == role,
            grants.c.state.in_([s.value for s in LIVE_GRANT_STATES]),
        )
        return [_grant_from(r) for r in self.conn.execute(query)]

    def live_roles(self) -> set[tuple[str, str]]:
        query = (
            select(grants.c.role, grants.c.target)
            .where(grants.c.state.in_([s.value for s in LIVE_GRANT_STATES]))
            .distinct()
        )
        return {(row.role, row.target) for row in self.conn.execute(query)}

    def due(self, now: datetime, limit: int) -> builtins.list[Grant]:
        # SKIP LOCKED: several workers on PostgreSQL each claim different rows.
        query = (
            self._select()
            .where(grants.c.due_at <= now)
            .order_by(grants.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_grant_from(r) for r in self.conn.execute(query)]

    def next_due_at(self) -> datetime | None:
        first_grant = self.conn.execute(select(func.min(grants.c.due_at))).scalar()
        first_request = self.conn.execute(select(func.min(requests.c.due_at))).scalar()
        dues: list[datetime] = [d for d in (first_grant, first_request) if d is not None]
        return min(dues, default=None)

    def drop_credentials(self, grant_id: str) -> None:
        self.conn.execute(update(grants).where(grants.c.id == grant_id).values(credentials=None))

    def set_credentials(self, grant_id: str, sealed: bytes) -> None:
        self.conn.execute(update(grants).where(grants.c.id == grant_id).values(credentials=sealed))

    def take_credentials(self, grant_id: str, at: datetime) -> bytes | None:
        row = self.conn.execute(select(grants.c.credentials).where(grants.c.id == grant_id)).first()
        if row is None or row.credentials is None:
            return None
        self.conn.execute(
            update(grants)
            .where(grants.c.id == grant_id)
            .values(credentials=None, credentials_fetched_at=at)
        )
        sealed: bytes = row.credentials
        return sealed

    def credentials_fetched(self, grant_id: str) -> bool:
        fetched = self.conn.execute(
            select(grants.c.credentials_fetched_at).where(grants.c.id == grant_id)
        ).scalar()
        return fetched is not None


# --- audit ------------------------------------------------------------------------------------


def _record_from(row: Row[Any]) -> AuditRecord:
    m = row._mapping
    entry = AuditEntry(
        actor=m["actor"],
        action=m["action"],
        subject=m["subject"],
        at=m["at"],
        outcome=m["outcome"],
        justification=m["justification"],
        ticket=m["ticket"],
        comment=m["comment"],
        data=m["data"],
    )
    return AuditRecord(seq=m["seq"], entry=entry, prev_hash=m["prev_hash"], hash=m["hash"])


class SqlAudit:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: list[AuditEntry] = []

    def append(self, entry: AuditEntry) -> None:
        self.pending.append(entry)

    def flush(self) -> None:
        """Chain the buffered entries onto the head, under the head row's lock."""
        if not self.pending:
            return
        head = self.conn.execute(
            select(audit_head.c.seq, audit_head.c.hash)
            .where(audit_head.c.id == 1)
            .with_for_update()
        ).first()
        if head is None:
            self.conn.execute(audit_head.insert().values(id=1, seq=0, hash=GENESIS))
        seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS)
        rows = []
        for entry in self.pending:
            record = seal(seq, prev_hash, entry)
            rows.append(
                {
                    "seq": record.seq,
                    "at": entry.at,
                    "actor": entry.actor,
                    "action": entry.action,
                    "subject": entry.subject,
                    "outcome": entry.outcome,
                    "justification": entry.justification,
                    "ticket": entry.ticket,
                    "comment": entry.comment,
                    "data": json.loads(json.dumps(dict(entry.data), default=str)),
                    "prev_hash": record.prev_hash,
                    "hash": record.hash,
                }
            )
            seq, prev_hash = record.seq, record.hash
        self.conn.execute(audit_log.insert(), rows)
        self.conn.execute(
            update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev_hash)
        )
        self.pending.clear()

    def records(self, *, after: int = 0, limit: int = 1000) -> builtins.list[AuditRecord]:
        query = (
            select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(limit)
        )
        return [_record_from(r) for r in self.conn.execute(query)]

    def last(self, limit: int) -> builtins.list[AuditRecord]:
        query = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        return list(reversed([_record_from(r) for r in self.conn.execute(query)]))

    def iterate(self, batch: int = 5000) -> Iterator[AuditRecord]:
        after = 0
        while True:
            page = self.records(after=after, limit=batch)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].seq


# --- policy -----------------------------------------------------------------------------------

_policy_cache: dict[tuple[int, str], PolicyVersion] = {}
_policy_cache_lock = threading.Lock()


class SqlPolicies:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _load(self, version: int, digest: str) -> PolicyVersion:
        """A version parsed once per process: rows are immutable, keyed by (version, digest)."""
        from jitaccess.adapters.policy_yaml import load_policy_text

        key = (version, digest)
        with _policy_cache_lock:
            cached = _policy_cache.get(key)
        if cached is not None:
            return cached
        row = self.conn.execute(
            select(policy_versions).where(policy_versions.c.version == version)
        ).one()
        document: Mapping[str, Any] = row.document
        loaded = PolicyVersion(
            version=row.version,
            policy=load_policy_text(
                json.dumps(document, ensure_ascii=False), f"policy v{row.version}"
            ),
            document=document,
            digest=row.digest,
            applied_at=row.applied_at,
            applied_by=row.applied_by,
        )
        with _policy_cache_lock:
            _policy_cache[key] = loaded
        return loaded

    def current(self) -> PolicyVersion | None:
        row = self.conn.execute(
            select(policy_versions.c.version, policy_versions.c.digest)
            .order_by(policy_versions.c.version.desc())
            .limit(1)
        ).first()
        return self._load(row.version, row.digest) if row else None

    def get(self, version: int) -> PolicyVersion | None:
        row = self.conn.execute(
            select(policy_versions.c.version, policy_versions.c.digest).where(
                policy_versions.c.version == version
            )
        ).first()
        return self._load(row.version, row.digest) if row else None

    def add(self, version: PolicyVersion) -> None:
        self.conn.execute(
            policy_versions.insert().values(
                version=version.version,
                digest=version.digest,
                document=dict(version.document),
                applied_at=version.applied_at,
                applied_by=version.applied_by,
            )
        )


# --- tokens -----------------------------------------------------------------------------------


def _token_from(row: Row[Any]) -> ApiToken:
    return ApiToken(**dict(row._mapping))


class SqlTokens:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, token: ApiToken) -> None:
        self.conn.execute(api_tokens.insert().values(**token.__dict__))

    def find(self, token_hash: str) -> ApiToken | None:
        row = self.conn.execute(
            select(api_tokens).where(api_tokens.c.token_hash == token_hash)
        ).first()
        return _token_from(row) if row else None

    def get(self, token_id: str) -> ApiToken | None:
        row = self.conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).first()
        return _token_from(row) if row else None

    def save(self, token: ApiToken) -> None:
        values = dict(token.__dict__)
        del values["id"]
        self.conn.execute(update(api_tokens).where(api_tokens.c.id == token.id).values(**values))

    def list(self, principal: str | None = None) -> builtins.list[ApiToken]:
        query = select(api_tokens).order_by(api_tokens.c.created_at)
        if principal is not None:
            query = query.where(api_tokens.c.principal == principal)
        return [_token_from(r) for r in self.conn.execute(query)]
