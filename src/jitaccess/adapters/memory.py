"""An in-memory unit of work: the storage ports without a database, for unit tests and
Hypothesis state machines. One transaction at a time; rollback restores a snapshot.
"""

from __future__ import annotations

import builtins
import copy
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from jitaccess.audit.chain import GENESIS, seal
from jitaccess.domain.mfa import MfaEnrollment
from jitaccess.domain.model import (
    HOLDING_GRANT_STATES,
    LIVE_GRANT_STATES,
    Grant,
    Request,
    RequestState,
    Review,
)
from jitaccess.ports import (
    ApiToken,
    AuditEntry,
    AuditRecord,
    DriftFinding,
    Notification,
    PolicyVersion,
    TargetHealth,
)

_TABLES = (
    "requests",
    "grants",
    "credentials",
    "audit",
    "policies",
    "tokens",
    "mfa",
    "reviews",
    "notifications",
    "drift",
    "health",
    "jobs",
)


@dataclass
class MemoryStore:
    requests: dict[str, Request] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    credentials: dict[str, bytes | None] = field(default_factory=dict)
    audit: list[AuditRecord] = field(default_factory=list)
    policies: list[PolicyVersion] = field(default_factory=list)
    tokens: dict[str, ApiToken] = field(default_factory=dict)
    mfa: dict[str, MfaEnrollment] = field(default_factory=dict)
    reviews: dict[str, Review] = field(default_factory=dict)
    notifications: list[Notification] = field(default_factory=list)
    drift: dict[str, DriftFinding] = field(default_factory=dict)
    health: dict[str, TargetHealth] = field(default_factory=dict)
    jobs: dict[str, datetime] = field(default_factory=dict)
    wakeups: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)


class _Requests:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def add(self, request: Request) -> None:
        self.store.requests[request.id] = copy.deepcopy(request)

    def get(self, request_id: str, *, for_update: bool = False) -> Request | None:
        found = self.store.requests.get(request_id)
        return copy.deepcopy(found) if found else None

    def save(self, request: Request) -> None:
        self.store.requests[request.id] = copy.deepcopy(request)

    def list(
        self, *, requester: str | None = None, state: str | None = None, limit: int = 200
    ) -> builtins.list[Request]:
        rows = [
            r
            for r in self.store.requests.values()
            if (requester is None or r.requester == requester)
            and (state is None or r.state == state)
        ]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return copy.deepcopy(rows[:limit])

    def due(self, now: datetime, limit: int) -> builtins.list[Request]:
        rows = [
            r
            for r in self.store.requests.values()
            if r.state is RequestState.PENDING and r.due_at is not None and r.due_at <= now
        ]
        return copy.deepcopy(sorted(rows, key=lambda r: r.created_at)[:limit])


class _Grants:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def add(self, grant: Grant) -> None:
        self.store.grants[grant.id] = copy.deepcopy(grant)

    def get(self, grant_id: str, *, for_update: bool = False) -> Grant | None:
        found = self.store.grants.get(grant_id)
        return copy.deepcopy(found) if found else None

    def lock_many(self, grant_ids: Iterable[str]) -> dict[str, Grant]:
        found = {i: self.store.grants[i] for i in sorted(set(grant_ids)) if i in self.store.grants}
        return copy.deepcopy(found)

    def save(self, grant: Grant) -> None:
        self.store.grants[grant.id] = copy.deepcopy(grant)

    def list(
        self,
        *,
        principal: str | None = None,
        state: str | None = None,
        request_id: str | None = None,
        limit: int = 200,
    ) -> builtins.list[Grant]:
        rows = [
            g
            for g in self.store.grants.values()
            if (principal is None or g.principal == principal)
            and (state is None or g.state == state)
            and (request_id is None or g.request_id == request_id)
        ]
        rows.sort(key=lambda g: g.created_at, reverse=True)
        return copy.deepcopy(rows[:limit])

    def holding(self, access_key: str, *, exclude: str) -> builtins.list[Grant]:
        return copy.deepcopy(
            [
                g
                for g in self.store.grants.values()
                if g.access_key == access_key
                and g.id != exclude
                and g.state in HOLDING_GRANT_STATES
            ]
        )

    def live_for(self, principal: str, role: str) -> builtins.list[Grant]:
        return copy.deepcopy(
            [
                g
                for g in self.store.grants.values()
                if g.principal == principal and g.role == role and g.state in LIVE_GRANT_STATES
            ]
        )

    def iter_live_on(self, target: str) -> Iterator[Grant]:
        live = [g for g in self.store.grants.values() if g.target == target and g.is_live]
        return iter(copy.deepcopy(live))

    def count_live(self, role: str) -> int:
        return sum(1 for g in self.store.grants.values() if g.role == role and g.is_live)

    def live_roles(self) -> set[tuple[str, str]]:
        return {(g.role, g.target) for g in self.store.grants.values() if g.is_live}

    def due(self, now: datetime, limit: int) -> builtins.list[Grant]:
        rows = [g for g in self.store.grants.values() if g.due_at is not None and g.due_at <= now]
        return copy.deepcopy(sorted(rows, key=lambda g: (g.due_at or now, g.id))[:limit])

    def next_due_at(self) -> datetime | None:
        dues = [g.due_at for g in self.store.grants.values() if g.due_at is not None]
        dues += [r.due_at for r in self.store.requests.values() if r.due_at is not None]
        return min(dues, default=None)

    def drop_credentials(self, grant_id: str) -> None:
        if self.store.credentials.get(grant_id) is not None:
            del self.store.credentials[grant_id]

    def set_credentials(self, grant_id: str, sealed: bytes) -> None:
        self.store.credentials[grant_id] = sealed

    def take_credentials(self, grant_id: str, at: datetime) -> bytes | None:
        sealed = self.store.credentials.get(grant_id)
        if sealed is not None:
            self.store.credentials[grant_id] = None
        return sealed

    def credentials_fetched(self, grant_id: str) -> bool:
        return grant_id in self.store.credentials and self.store.credentials[grant_id] is None


class _Audit:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def append(self, entry: AuditEntry) -> None:
        last = self.store.audit[-1] if self.store.audit else None
        self.store.audit.append(
            seal(last.seq if last else 0, last.hash if last else GENESIS, entry)
        )

    def records(self, *, after: int = 0, limit: int = 1000) -> builtins.list[AuditRecord]:
        return [r for r in self.store.audit if r.seq > after][:limit]

    def last(self, limit: int) -> builtins.list[AuditRecord]:
        return self.store.audit[-limit:]

    def iterate(self, batch: int = 5000) -> Iterator[AuditRecord]:
        return iter(list(self.store.audit))


class _Policies:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def current(self) -> PolicyVersion | None:
        return self.store.policies[-1] if self.store.policies else None

    def get(self, version: int) -> PolicyVersion | None:
        return next((p for p in self.store.policies if p.version == version), None)

    def add(self, version: PolicyVersion) -> None:
        self.store.policies.append(version)


class _Tokens:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def add(self, token: ApiToken) -> None:
        self.store.tokens[token.id] = token

    def find(self, token_hash: str) -> ApiToken | None:
        return next((t for t in self.store.tokens.values() if t.token_hash == token_hash), None)

    def get(self, token_id: str) -> ApiToken | None:
        return self.store.tokens.get(token_id)

    def save(self, token: ApiToken) -> None:
        self.store.tokens[token.id] = token

    def list(self, principal: str | None = None) -> builtins.list[ApiToken]:
        return [t for t in self.store.tokens.values() if principal in (None, t.principal)]


class _Mfa:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def get(self, principal: str, *, for_update: bool = False) -> MfaEnrollment | None:
        found = self.store.mfa.get(principal)
        return copy.deepcopy(found) if found else None

    def save(self, enrollment: MfaEnrollment) -> None:
        self.store.mfa[enrollment.principal] = copy.deepcopy(enrollment)

    def delete(self, principal: str) -> None:
        self.store.mfa.pop(principal, None)


class _Reviews:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def add(self, review: Review) -> None:
        self.store.reviews[review.id] = copy.deepcopy(review)

    def get(self, review_id: str, *, for_update: bool = False) -> Review | None:
        found = self.store.reviews.get(review_id)
        return copy.deepcopy(found) if found else None

    def save(self, review: Review) -> None:
        self.store.reviews[review.id] = copy.deepcopy(review)

    def list(self, *, state: str | None = None, limit: int = 200) -> builtins.list[Review]:
        rows = [r for r in self.store.reviews.values() if state is None or r.state == state]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return copy.deepcopy(rows[:limit])


class _Notifications:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def add(self, notification: Notification) -> None:
        self.store.notifications.append(notification)

    def list(
        self, *, recipient: str, since: datetime | None = None, limit: int = 100
    ) -> builtins.list[Notification]:
        rows = [
            n
            for n in self.store.notifications
            if n.recipient == recipient and (since is None or n.created_at >= since)
        ]
        rows.sort(key=lambda n: n.created_at, reverse=True)
        return rows[:limit]


class _Drift:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def add(self, finding: DriftFinding) -> None:
        self.store.drift[finding.id] = copy.deepcopy(finding)

    def save(self, finding: DriftFinding) -> None:
        self.store.drift[finding.id] = copy.deepcopy(finding)

    def open_for(self, target: str) -> builtins.list[DriftFinding]:
        return copy.deepcopy(
            [f for f in self.store.drift.values() if f.target == target and f.state == "open"]
        )

    def list(
        self, *, state: str | None = None, target: str | None = None, limit: int = 500
    ) -> builtins.list[DriftFinding]:
        rows = [
            f
            for f in self.store.drift.values()
            if state in (None, f.state) and target in (None, f.target)
        ]
        rows.sort(key=lambda f: f.last_seen_at, reverse=True)
        return copy.deepcopy(rows[:limit])


class _Ops:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def save_health(self, health: TargetHealth) -> None:
        self.store.health[health.target] = health

    def health(self) -> builtins.list[TargetHealth]:
        return sorted(self.store.health.values(), key=lambda h: h.target)

    def claim_job(self, name: str, now: datetime, next_run_at: datetime) -> bool:
        due = self.store.jobs.get(name)
        if due is not None and due > now:
            return False
        self.store.jobs[name] = next_run_at
        return True

    def finish_job(self, name: str, result: Mapping[str, Any]) -> None:
        """Results are not kept in memory."""


class MemoryUnitOfWork:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.requests = _Requests(store)
        self.grants = _Grants(store)
        self.audit = _Audit(store)
        self.policies = _Policies(store)
        self.tokens = _Tokens(store)
        self.mfa = _Mfa(store)
        self.reviews = _Reviews(store)
        self.notifications = _Notifications(store)
        self.drift = _Drift(store)
        self.ops = _Ops(store)
        self._snapshot: dict[str, object] = {}
        self._wake = False

    def __enter__(self) -> MemoryUnitOfWork:
        self.store.lock.acquire()
        self._take_snapshot()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.rollback()
        finally:
            self.store.lock.release()

    def _take_snapshot(self) -> None:
        self._snapshot = {name: copy.copy(getattr(self.store, name)) for name in _TABLES}
        self._wake = False

    def commit(self) -> None:
        if self._wake:
            self.store.wakeups += 1
        self._take_snapshot()

    def rollback(self) -> None:
        for name, value in self._snapshot.items():
            setattr(self.store, name, copy.copy(value))
        self._rebind()
        self._wake = False

    def _rebind(self) -> None:
        repos = (self.requests, self.grants, self.audit, self.policies, self.tokens)
        for repo in (*repos, self.mfa, self.reviews, self.notifications, self.drift, self.ops):
            repo.store = self.store

    def wake_worker(self, due: datetime | None = None) -> None:
        self._wake = True

    def lock_role(self, role: str) -> None:
        """One transaction at a time already (the store lock)."""


class MemoryUnitOfWorkFactory:
    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()

    def __call__(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self.store)
