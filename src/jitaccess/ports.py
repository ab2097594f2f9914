"""The ports: what the services need from the outside world, as Protocols.

Adapters (adapters/db, adapters/connectors) implement them; bootstrap.py wires them together;
in-memory fakes implement them for unit tests.
"""

from __future__ import annotations

import builtins
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from jitaccess.domain.mfa import MfaEnrollment
from jitaccess.domain.model import Grant, Request, Review
from jitaccess.domain.policy import Policy, Target


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


# --- connectors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """What one grant gives one principal in one target; the unit connectors work on."""

    grant_id: str
    principal: str
    role: str
    target: str
    grants: Mapping[str, Any]
    starts_at: datetime
    ends_at: datetime
    params: Mapping[str, str] = field(default_factory=dict)  # e.g. {"ssh_public_key": "..."}


@dataclass(frozen=True)
class ExistingAccess:
    """Access found in a target by `list_access` (for drift detection and tests)."""

    principal: str | None
    account: str
    grant_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class Connector(Protocol):
    """Provisions and removes access in one target. Every operation is idempotent.

    `revoke` returns only when the access is confirmed gone (sessions included); otherwise it
    raises `ConnectorError` and the worker retries. `provision` returns credentials to hand to
    the grantee once (or None when the access needs none).

    `list_access` returns the access the target holds that jitaccess governs: accounts it
    created, and membership in anything a role of the policy grants on this target (so access
    added behind jitaccess's back shows up as drift). `remove` takes away one such entry found
    by `list_access` that no grant explains (`drift: remove`).

    A connector class also has `from_target(target)`, and may have `required_params` (request
    parameters every grant on it needs, e.g. `("ssh_public_key",)`) and a static
    `grant_problems(grants) -> list[tuple[key, reason]]` that the policy loader calls to check
    a role's `grants` for this target type.
    """

    #: True when every grant gets its own account (postgres login role per grant), so grants
    #: never share access; False when access is shared state (a group membership) that must be
    #: reference-counted across overlapping grants.
    per_grant_account: bool

    def provision(self, access: Access) -> Mapping[str, str] | None: ...

    def revoke(self, access: Access) -> None: ...

    def extend(self, access: Access) -> None:
        """Move the end of live access to `access.ends_at` (e.g. PostgreSQL VALID UNTIL)."""
        ...

    def list_access(
        self, governed: Sequence[Mapping[str, Any]] = ()
    ) -> builtins.list[ExistingAccess]:
        """Accounts jitaccess made here, plus holders of anything in `governed` (the `grants`
        of every policy role on this target) — the latter found even when made by hand."""
        ...

    def remove(self, existing: ExistingAccess) -> None:
        """Take away access found by `list_access` that no grant explains (drift repair)."""
        ...

    def account_of(self, access: Access) -> str:
        """The `account` name `list_access` reports for this grant's access."""
        ...

    def check(self) -> None:
        """Raise ConnectorError when the target cannot be reached or used."""
        ...


class ConnectorFactory(Protocol):
    def __call__(self, target: Target) -> Connector: ...


class Connectors(Protocol):
    """The connector of each target of the current policy."""

    def for_target(self, target: Target) -> Connector: ...

    def per_grant_account(self, target: Target) -> bool:
        """Whether the target's connector type gives each grant its own account."""
        ...

    def required_params(self, target: Target) -> tuple[str, ...]:
        """Request parameters every grant on this target needs (e.g. ssh_public_key)."""
        ...

    def param_problems(
        self, target: Target, params: Mapping[str, str]
    ) -> builtins.list[tuple[str, str]]:
        """(name, reason) for each request parameter the target's connector refuses."""
        ...


# --- persistence ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    """One thing that happened (or was refused). Never holds a secret."""

    actor: str
    action: str
    subject: str
    at: datetime
    outcome: str = "ok"  # "ok" | "refused"
    justification: str | None = None
    ticket: str | None = None
    comment: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    entry: AuditEntry
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class PolicyVersion:
    """One applied policy. `document` is the canonical document it was stored as; a version
    loaded from the database reads it from there when asked (it is not kept in memory: a big
    policy's document is several times the size of its `policy`)."""

    version: int
    policy: Policy
    document: Mapping[str, Any]
    digest: str
    applied_at: datetime
    applied_by: str


@dataclass(frozen=True)
class ApiToken:
    id: str
    principal: str
    token_hash: str
    created_at: datetime
    created_by: str
    description: str = ""
    revoked_at: datetime | None = None


class RequestRepository(Protocol):
    def add(self, request: Request) -> None: ...

    def get(self, request_id: str, *, for_update: bool = False) -> Request | None: ...

    def save(self, request: Request) -> None: ...

    def list(
        self, *, requester: str | None = None, state: str | None = None, limit: int = 200
    ) -> builtins.list[Request]: ...

    def due(self, now: datetime, limit: int) -> builtins.list[Request]:
        """Pending requests past their pending TTL, locked (skipping rows others hold)."""
        ...


class GrantRepository(Protocol):
    def add(self, grant: Grant) -> None: ...

    def get(self, grant_id: str, *, for_update: bool = False) -> Grant | None: ...

    def lock_many(self, grant_ids: Iterable[str]) -> dict[str, Grant]:
        """The grants of `grant_ids` that exist, by id, locked (in id order, so two callers
        locking overlapping sets never deadlock)."""
        ...

    def save(self, grant: Grant) -> None: ...

    def list(
        self,
        *,
        principal: str | None = None,
        state: str | None = None,
        request_id: str | None = None,
        limit: int = 200,
    ) -> builtins.list[Grant]: ...

    def holding(self, access_key: str, *, exclude: str) -> builtins.list[Grant]:
        """Other grants in activating/active state sharing `access_key`."""
        ...

    def live_for(self, principal: str, role: str) -> builtins.list[Grant]: ...

    def iter_live_on(self, target: str) -> Iterator[Grant]:
        """Grants on `target` not yet ended, one at a time as they are read (valid while the
        unit of work is open)."""
        ...

    def count_live(self, role: str) -> int:
        """Grants of `role` not yet ended (scheduled, activating, active, revoking)."""
        ...

    def live_roles(self) -> set[tuple[str, str]]:
        """(role, target) of every grant not yet ended."""
        ...

    def due(self, now: datetime, limit: int) -> builtins.list[Grant]:
        """Grants whose due_at has passed, locked (skipping rows another worker holds)."""
        ...

    def next_due_at(self) -> datetime | None: ...

    def set_credentials(self, grant_id: str, sealed: bytes) -> None: ...

    def take_credentials(self, grant_id: str, at: datetime) -> bytes | None:
        """Return the sealed credentials once and erase them, noting when."""
        ...

    def credentials_fetched(self, grant_id: str) -> bool: ...

    def drop_credentials(self, grant_id: str) -> None:
        """Erase unfetched credentials (the grant ended; nobody may fetch them now)."""
        ...


class AuditLog(Protocol):
    def append(self, entry: AuditEntry) -> None:
        """Add `entry` to the current transaction; it is chained and stored at commit, after
        every other write, so a failed audit write fails the whole change."""
        ...

    def records(self, *, after: int = 0, limit: int = 1000) -> builtins.list[AuditRecord]: ...

    def last(self, limit: int) -> builtins.list[AuditRecord]: ...

    def iterate(self, batch: int = 5000) -> Iterator[AuditRecord]: ...


#: One audit record as the database stores it, for the verifier: seq, at (as the chain hashes
#: it, see `audit.chain.format_time`; None when the stored value is not a time), actor, action,
#: subject, outcome, justification, ticket, comment, data (its stored JSON text), prev_hash, hash.
StoredRecord = tuple[
    int, str | None, str, str, str, str, str | None, str | None, str | None, str, str, str
]


class StoredRangeReader(Protocol):
    """Reads stored audit records on a connection of its own. Picklable: a verifier in another
    process reads its range of the chain with it."""

    def read(self, first: int | None, last: int | None) -> Generator[StoredRecord, None, None]:
        """The records with first <= seq <= last (None: unbounded), in seq order; close it
        when done."""
        ...


@runtime_checkable
class StoredAuditChain(Protocol):
    """An audit log that streams its records to a verifier as stored, without making domain
    objects of them, and can be read from other processes when its storage allows."""

    def last_seq(self) -> int | None: ...

    def stored(
        self, first: int | None = None, last: int | None = None
    ) -> Generator[StoredRecord, None, None]:
        """As `StoredRangeReader.read`, on this unit of work's connection."""
        ...

    def range_reader(self) -> StoredRangeReader | None:
        """None when another process cannot open this storage (an in-memory database)."""
        ...


class PolicyRepository(Protocol):
    def current(self) -> PolicyVersion | None: ...

    def get(self, version: int) -> PolicyVersion | None: ...

    def add(self, version: PolicyVersion) -> None: ...


class TokenRepository(Protocol):
    def add(self, token: ApiToken) -> None: ...

    def find(self, token_hash: str) -> ApiToken | None: ...

    def get(self, token_id: str) -> ApiToken | None: ...

    def save(self, token: ApiToken) -> None: ...

    def list(self, principal: str | None = None) -> builtins.list[ApiToken]: ...


@dataclass(frozen=True)
class Notification:
    """A message for one principal's inbox (written in the transaction that caused it)."""

    id: str
    recipient: str
    kind: str  # e.g. approval-needed, escalated, break-glass, approved, denied, expired
    subject: str  # the request, grant or review it is about
    message: str
    created_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


class MfaRepository(Protocol):
    def get(self, principal: str, *, for_update: bool = False) -> MfaEnrollment | None: ...

    def save(self, enrollment: MfaEnrollment) -> None:
        """Insert or update."""
        ...

    def delete(self, principal: str) -> None: ...


class ReviewRepository(Protocol):
    def add(self, review: Review) -> None: ...

    def get(self, review_id: str, *, for_update: bool = False) -> Review | None: ...

    def save(self, review: Review) -> None: ...

    def list(self, *, state: str | None = None, limit: int = 200) -> builtins.list[Review]: ...


class NotificationRepository(Protocol):
    def add(self, notification: Notification) -> None: ...

    def list(
        self, *, recipient: str, since: datetime | None = None, limit: int = 100
    ) -> builtins.list[Notification]:
        """Newest first."""
        ...


@dataclass
class DriftFinding:
    """Access in a target that no grant explains (`unexplained`), or a grant whose access the
    target no longer has (`missing`)."""

    id: str
    target: str
    kind: str  # unexplained | missing
    account: str
    found_at: datetime
    last_seen_at: datetime
    principal: str | None = None
    grant_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    state: str = "open"  # open | removed | repaired | gone
    resolved_at: datetime | None = None


@dataclass(frozen=True)
class TargetHealth:
    target: str
    type: str
    checked_at: datetime
    ok: bool
    error: str | None = None
    reconciled_at: datetime | None = None


class DriftRepository(Protocol):
    def add(self, finding: DriftFinding) -> None: ...

    def save(self, finding: DriftFinding) -> None: ...

    def open_for(self, target: str) -> builtins.list[DriftFinding]: ...

    def list(
        self, *, state: str | None = None, target: str | None = None, limit: int = 500
    ) -> builtins.list[DriftFinding]: ...


class OpsRepository(Protocol):
    """Target health and the schedule of periodic jobs."""

    def save_health(self, health: TargetHealth) -> None: ...

    def health(self) -> builtins.list[TargetHealth]: ...

    def claim_job(self, name: str, now: datetime, next_run_at: datetime) -> bool:
        """Take the job's run due at `now` (at most one caller wins), setting the next one."""
        ...

    def finish_job(self, name: str, result: Mapping[str, Any]) -> None: ...


class OnCall(Protocol):
    """Reads on-call schedule files named by policy."""

    def who(self, path: str, at: datetime) -> frozenset[str] | None:
        """User names or e-mails on call at `at`; None when the file cannot be read."""
        ...


class UnitOfWork(Protocol):
    """One transaction. Leaving the block without commit() rolls back.

    Write transactions are serialised per row (`SELECT ... FOR UPDATE` on PostgreSQL, the whole
    database with `BEGIN IMMEDIATE` on SQLite).
    """

    @property
    def requests(self) -> RequestRepository: ...

    @property
    def grants(self) -> GrantRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def policies(self) -> PolicyRepository: ...

    @property
    def tokens(self) -> TokenRepository: ...

    @property
    def mfa(self) -> MfaRepository: ...

    @property
    def reviews(self) -> ReviewRepository: ...

    @property
    def notifications(self) -> NotificationRepository: ...

    @property
    def drift(self) -> DriftRepository: ...

    @property
    def ops(self) -> OpsRepository: ...

    def lock_role(self, role: str) -> None:
        """Serialise writers that count a role's live grants (max_active) until commit."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def wake_worker(self, due: datetime | None = None) -> None:
        """After commit, tell the workers something becomes due at `due` (None: now)."""
        ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> AbstractContextManager[UnitOfWork]: ...


class SecretBox(Protocol):
    """Seals credentials at rest; only the server key opens them."""

    def seal(self, plaintext: bytes) -> bytes: ...

    def open(self, sealed: bytes) -> bytes: ...
