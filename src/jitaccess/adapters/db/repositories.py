"""Repositories over SQLAlchemy Core: domain objects in, domain objects out. Requests and grants
here; the audit trail, policy versions and API tokens each have their own module.

Statements are built once, at import, and executed with the row as parameters: a statement
built per call (`.values(**row)`) makes SQLAlchemy compute a cache key over every value, which
cost more than the rest of the write."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    bindparam,
    func,
    literal_column,
    select,
    update,
)

from jitaccess.adapters.db.tables import grants, requests
from jitaccess.adapters.db.write_buffer import WriteBuffer
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
        "partial": request.partial,
        "break_glass": request.break_glass,
        "auto_approved": dict(request.auto_approved),
        "escalations": list(request.escalations),
        "next_escalation_at": request.next_escalation_at,
        "params": dict(request.params),
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
        partial=bool(m["partial"]),
        break_glass=bool(m["break_glass"]),
        auto_approved=dict(m["auto_approved"] or {}),
        escalations=list(m["escalations"] or []),
        next_escalation_at=m["next_escalation_at"],
        params=dict(m["params"] or {}),
    )


# "b_id", not "id": a bound parameter may not share its name with a column being SET.
_INSERT_REQUEST = requests.insert()
_GET_REQUEST = select(requests).where(requests.c.id == bindparam("b_id"))
_GET_REQUEST_FOR_UPDATE = _GET_REQUEST.with_for_update()
_UPDATE_REQUEST = update(requests).where(requests.c.id == bindparam("b_id"))


class SqlRequests:
    """Adds and saves are held in the unit of work's write buffer, when it has one (see
    write_buffer.py), and sent with its next statement or its commit."""

    def __init__(self, conn: Connection, writes: WriteBuffer | None = None) -> None:
        self.conn = conn
        self.writes = writes

    def add(self, request: Request) -> None:
        if self.writes is not None:
            self.writes.insert(requests, _request_row(request))
            return
        self.conn.execute(_INSERT_REQUEST, _request_row(request))

    def get(self, request_id: str, *, for_update: bool = False) -> Request | None:
        query = _GET_REQUEST_FOR_UPDATE if for_update else _GET_REQUEST
        row = self.conn.execute(query, {"b_id": request_id}).first()
        return _request_from(row) if row else None

    def save(self, request: Request) -> None:
        values = _request_row(request)
        if self.writes is not None:
            self.writes.update(requests, values.pop("id"), values)
            return
        values["b_id"] = values.pop("id")
        self.conn.execute(_UPDATE_REQUEST, values)

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
    row["params"] = dict(grant.params)
    return row


def _grant_from(row: Row[Any]) -> Grant:
    m = row._mapping
    values = {name: m[name] for name in _GRANT_FIELDS}
    return Grant(
        **values,
        state=GrantState(m["state"]),
        end_reason=EndReason(m["end_reason"]) if m["end_reason"] else None,
        params=dict(m["params"] or {}),
    )


_GRANT_COLUMNS = [grants.c[name] for name in (*_GRANT_FIELDS, "state", "end_reason", "params")]


def _state_in(states: frozenset[GrantState]) -> ColumnElement[bool]:
    """`state IN ('a', 'b')` written out in the SQL: a constant list, where an expanding
    parameter would be rendered anew on every execution."""
    return grants.c.state.in_([literal_column(f"'{s.value}'") for s in sorted(states)])


_LIVE = _state_in(LIVE_GRANT_STATES)
_HOLDING = _state_in(HOLDING_GRANT_STATES)
_SELECT_GRANTS = select(*_GRANT_COLUMNS)
_INSERT_GRANT = grants.insert()
_GET_GRANT = _SELECT_GRANTS.where(grants.c.id == bindparam("b_id"))
_GET_GRANT_FOR_UPDATE = _GET_GRANT.with_for_update()
_LOCK_GRANTS = (
    _SELECT_GRANTS.where(grants.c.id.in_(bindparam("b_ids", expanding=True)))
    .order_by(grants.c.id)
    .with_for_update()
)
_UPDATE_GRANT = update(grants).where(grants.c.id == bindparam("b_id"))
_HOLDING_GRANTS = _SELECT_GRANTS.where(
    grants.c.access_key == bindparam("b_key"), grants.c.id != bindparam("b_id"), _HOLDING
)
_LIVE_FOR = _SELECT_GRANTS.where(
    grants.c.principal == bindparam("b_principal"), grants.c.role == bindparam("b_role"), _LIVE
)
_LIVE_ON = _SELECT_GRANTS.where(grants.c.target == bindparam("b_target"), _LIVE)
_LIVE_ON_STREAMED = _LIVE_ON.execution_options(yield_per=500)
_COUNT_LIVE = select(func.count()).where(grants.c.role == bindparam("b_role"), _LIVE)
_LIVE_ROLES = select(grants.c.role, grants.c.target).where(_LIVE).distinct()
# SKIP LOCKED: several workers on PostgreSQL each claim different rows.
_DUE_GRANTS = (
    _SELECT_GRANTS.where(grants.c.due_at <= bindparam("b_now"))
    .order_by(grants.c.due_at)
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True)
)
# One round trip for both: the worker asks after every pass.
_FIRST_DUE = select(
    func.min(grants.c.due_at).label("grant"),
    select(func.min(requests.c.due_at)).scalar_subquery().label("request"),
)
# Only a row that holds credentials is written: most grants have none, or none left.
_DROP_CREDENTIALS = (
    update(grants)
    .where(grants.c.id == bindparam("b_id"), grants.c.credentials.is_not(None))
    .values(credentials=None)
)
_SET_CREDENTIALS = update(grants).where(grants.c.id == bindparam("b_id"))
_GET_CREDENTIALS = select(grants.c.credentials).where(grants.c.id == bindparam("b_id"))
_CREDENTIALS_FETCHED = select(grants.c.credentials_fetched_at).where(
    grants.c.id == bindparam("b_id")
)


class SqlGrants:
    """Adds, saves and credentials set are held in the unit of work's write buffer, when it has
    one (see write_buffer.py), and sent with its next statement or its commit."""

    def __init__(self, conn: Connection, writes: WriteBuffer | None = None) -> None:
        self.conn = conn
        self.writes = writes

    def _select(self) -> Any:
        return _SELECT_GRANTS

    def add(self, grant: Grant) -> None:
        if self.writes is not None:
            self.writes.insert(grants, _grant_row(grant))
            return
        self.conn.execute(_INSERT_GRANT, _grant_row(grant))

    def get(self, grant_id: str, *, for_update: bool = False) -> Grant | None:
        query = _GET_GRANT_FOR_UPDATE if for_update else _GET_GRANT
        row = self.conn.execute(query, {"b_id": grant_id}).first()
        return _grant_from(row) if row else None

    def lock_many(self, grant_ids: Iterable[str]) -> dict[str, Grant]:
        ids = sorted(set(grant_ids))
        if not ids:
            return {}
        rows = self.conn.execute(_LOCK_GRANTS, {"b_ids": ids})
        return {g.id: g for g in map(_grant_from, rows)}

    def save(self, grant: Grant) -> None:
        values = _grant_row(grant)
        if self.writes is not None:
            self.writes.update(grants, values.pop("id"), values)
            return
        values["b_id"] = values.pop("id")
        self.conn.execute(_UPDATE_GRANT, values)

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
        rows = self.conn.execute(_HOLDING_GRANTS, {"b_key": access_key, "b_id": exclude})
        return [_grant_from(r) for r in rows]

    def live_for(self, principal: str, role: str) -> builtins.list[Grant]:
        rows = self.conn.execute(_LIVE_FOR, {"b_principal": principal, "b_role": role})
        return [_grant_from(r) for r in rows]

    def iter_live_on(self, target: str) -> Iterator[Grant]:
        # Fetched 500 at a time (a server-side cursor on PostgreSQL): receiving 100,000 rows
        # at once holds Python's interpreter lock for a long stretch in the driver.
        for row in self.conn.execute(_LIVE_ON_STREAMED, {"b_target": target}):
            yield _grant_from(row)

    def count_live(self, role: str) -> int:
        return int(self.conn.execute(_COUNT_LIVE, {"b_role": role}).scalar_one())

    def live_roles(self) -> set[tuple[str, str]]:
        return {(row.role, row.target) for row in self.conn.execute(_LIVE_ROLES)}

    def due(self, now: datetime, limit: int) -> builtins.list[Grant]:
        rows = self.conn.execute(_DUE_GRANTS, {"b_now": now, "b_limit": limit})
        return [_grant_from(r) for r in rows]

    def next_due_at(self) -> datetime | None:
        first = self.conn.execute(_FIRST_DUE).one()
        dues: list[datetime] = [d for d in (first.grant, first.request) if d is not None]
        return min(dues, default=None)

    def drop_credentials(self, grant_id: str) -> None:
        if self.writes is not None and self.writes.holds_row(grants, grant_id):
            # Goes with the row's save (which writes it anyway).
            self.writes.update(grants, grant_id, {"credentials": None})
            return
        self.conn.execute(_DROP_CREDENTIALS, {"b_id": grant_id})

    def set_credentials(self, grant_id: str, sealed: bytes) -> None:
        if self.writes is not None:
            self.writes.update(grants, grant_id, {"credentials": sealed})
            return
        self.conn.execute(_SET_CREDENTIALS, {"credentials": sealed, "b_id": grant_id})

    def take_credentials(self, grant_id: str, at: datetime) -> bytes | None:
        row = self.conn.execute(_GET_CREDENTIALS, {"b_id": grant_id}).first()
        if row is None or row.credentials is None:
            return None
        self.conn.execute(
            _SET_CREDENTIALS,
            {"credentials": None, "credentials_fetched_at": at, "b_id": grant_id},
        )
        sealed: bytes = row.credentials
        return sealed

    def credentials_fetched(self, grant_id: str) -> bool:
        fetched = self.conn.execute(_CREDENTIALS_FETCHED, {"b_id": grant_id}).scalar()
        return fetched is not None
