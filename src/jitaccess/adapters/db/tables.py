"""The schema, mapped outside the domain. Alembic migrations create exactly these tables."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python; naive UTC in the database, so SQLite sorts them right."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


metadata = MetaData()

requests = Table(
    "requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("requester", String(64), nullable=False, index=True),
    Column("roles", JSON, nullable=False),
    Column("duration_s", Integer, nullable=False),
    Column("justification", Text, nullable=False),
    Column("ticket", String(200)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("start_at", UTCDateTime),
    Column("state", String(16), nullable=False, index=True),
    Column("pending_until", UTCDateTime),
    Column("decided_at", UTCDateTime),
    Column("approvals", JSON, nullable=False),
    Column("grant_ids", JSON, nullable=False),
    Column("extends_grant_id", String(40)),
    Column("due_at", UTCDateTime, index=True),
    Column("partial", Boolean, nullable=False, server_default=false()),
    Column("break_glass", Boolean, nullable=False, server_default=false()),
    Column("auto_approved", JSON),
    Column("escalations", JSON),
    Column("next_escalation_at", UTCDateTime),
    Column("params", JSON),
)

grants = Table(
    "grants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("request_id", String(40), nullable=False, index=True),
    Column("principal", String(64), nullable=False),
    Column("role", String(128), nullable=False),
    Column("target", String(64), nullable=False),
    Column("access_key", String(300), nullable=False, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("starts_at", UTCDateTime, nullable=False),
    Column("ends_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("end_reason", String(16)),
    Column("ended_by", String(64)),
    Column("end_comment", Text),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime),
    Column("failing_since", UTCDateTime),
    Column("flagged_at", UTCDateTime),
    Column("last_error", Text),
    Column("due_at", UTCDateTime, index=True),
    Column("credentials", LargeBinary),
    Column("credentials_fetched_at", UTCDateTime),
    Column("params", JSON),
    Index("ix_grants_principal_role", "principal", "role"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False, index=True),
    Column("subject", String(300), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("justification", Text),
    Column("ticket", String(200)),
    Column("comment", Text),
    Column("data", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# One row; locking it serialises appends so concurrent writers still form one chain.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("hash", String(64), nullable=False),
)

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("digest", String(64), nullable=False),
    Column("document", JSON, nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
    Column("applied_by", String(64), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("principal", String(64), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("revoked_at", UTCDateTime),
)

mfa_enrollments = Table(
    "mfa_enrollments",
    metadata,
    Column("principal", String(64), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime),
    Column("last_step", BigInteger),
    Column("failures", Integer, nullable=False),
    Column("failures_since", UTCDateTime),
    Column("locked_until", UTCDateTime),
)

reviews = Table(
    "reviews",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("request_id", String(40), nullable=False, index=True),
    Column("principal", String(64), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("justification", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("signed_off_by", String(64)),
    Column("signed_off_at", UTCDateTime),
    Column("comment", Text),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("recipient", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("message", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("data", JSON, nullable=False),
    Index("ix_notifications_recipient_created", "recipient", "created_at"),
)

drift_findings = Table(
    "drift_findings",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("target", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # unexplained | missing
    Column("account", String(300), nullable=False),
    Column("principal", String(64)),
    Column("grant_id", String(40)),
    Column("detail", JSON, nullable=False),
    Column("found_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False, index=True),  # open | removed | repaired | gone
    Column("resolved_at", UTCDateTime),
    Index("ix_drift_target_account", "target", "account", "kind"),
)

target_health = Table(
    "target_health",
    metadata,
    Column("target", String(64), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("checked_at", UTCDateTime, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("error", Text),
    Column("reconciled_at", UTCDateTime),
)

# One row per periodic job: a worker takes a run by moving next_run_at ahead in one UPDATE,
# so of N workers exactly one runs each job when it is due.
jobs = Table(
    "jobs",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("next_run_at", UTCDateTime, nullable=False),
    Column("last_run_at", UTCDateTime),
    Column("last_result", JSON),
)
