"""Requests, approvals and grants, and every state transition they may make.

Each method checks that the transition is allowed from the current state and raises
`Conflict` otherwise, so a stale or doubled action can never be applied twice.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from jitaccess.domain.errors import Conflict


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Decision(StrEnum):
    APPROVE = "approve"
    DENY = "deny"


class GrantState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVATING = "activating"
    ACTIVE = "active"
    REVOKING = "revoking"
    EXPIRED = "expired"
    REVOKED = "revoked"
    DEACTIVATED = "deactivated"


LIVE_GRANT_STATES = frozenset(
    {GrantState.SCHEDULED, GrantState.ACTIVATING, GrantState.ACTIVE, GrantState.REVOKING}
)
HOLDING_GRANT_STATES = frozenset({GrantState.ACTIVATING, GrantState.ACTIVE})
ENDED_GRANT_STATES = frozenset({GrantState.EXPIRED, GrantState.REVOKED, GrantState.DEACTIVATED})


class EndReason(StrEnum):
    EXPIRED = "expired"
    REVOKED = "revoked"
    DEACTIVATED = "deactivated"


_END_STATE = {
    EndReason.EXPIRED: GrantState.EXPIRED,
    EndReason.REVOKED: GrantState.REVOKED,
    EndReason.DEACTIVATED: GrantState.DEACTIVATED,
}


@dataclass(frozen=True)
class StageMark:
    """Which stage of which role one decision was counted for."""

    role: str
    stage: int


@dataclass(frozen=True)
class Approval:
    approver: str
    decision: Decision
    comment: str
    at: datetime
    counted_for: tuple[StageMark, ...]


@dataclass
class Request:
    id: str
    requester: str
    roles: tuple[str, ...]
    duration: timedelta
    justification: str
    ticket: str | None
    created_at: datetime
    policy_version: int
    start_at: datetime | None = None
    state: RequestState = RequestState.PENDING
    pending_until: datetime | None = None
    decided_at: datetime | None = None
    approvals: list[Approval] = field(default_factory=list)
    grant_ids: list[str] = field(default_factory=list)
    extends_grant_id: str | None = None  # set when this request asks to extend a grant
    partial: bool = False  # a bundle may be granted for the roles that were approved
    break_glass: bool = False  # emergency activation: no approval, alerted, reviewed after
    auto_approved: dict[str, str] = field(default_factory=dict)  # role -> rule that fired
    escalations: list[str] = field(default_factory=list)  # "role#stage" already escalated
    next_escalation_at: datetime | None = None  # the next stage escalation not yet announced
    params: dict[str, str] = field(default_factory=dict)  # e.g. ssh_public_key, for connectors

    @property
    def due_at(self) -> datetime | None:
        """When the worker must look: the pending TTL, or an escalation to announce."""
        if self.state is not RequestState.PENDING:
            return None
        times = [t for t in (self.pending_until, self.next_escalation_at) if t is not None]
        return min(times) if times else None

    def _require_pending(self, action: str) -> None:
        if self.state is not RequestState.PENDING:
            raise Conflict(
                f"cannot {action} request {self.id}: it is {self.state.value}, not pending"
            )

    def is_past_ttl(self, now: datetime) -> bool:
        return self.pending_until is not None and now >= self.pending_until

    def has_decided(self, principal: str, mark: StageMark | None = None) -> bool:
        """Whether `principal` decided on this request (or on one stage of it)."""
        return any(
            a.approver == principal and (mark is None or mark in a.counted_for)
            for a in self.approvals
        )

    def record(self, approval: Approval) -> None:
        """One decision per person per stage: a stage counts distinct people."""
        self._require_pending(approval.decision.value)
        if not approval.counted_for or any(
            self.has_decided(approval.approver, mark) for mark in approval.counted_for
        ):
            raise Conflict(f"{approval.approver} has already decided on request {self.id}")
        self.approvals.append(approval)

    def approve(self, now: datetime) -> None:
        self._require_pending("approve")
        self.state = RequestState.APPROVED
        self.decided_at = now

    def deny(self, now: datetime) -> None:
        self._require_pending("deny")
        self.state = RequestState.DENIED
        self.decided_at = now

    def cancel(self, now: datetime) -> None:
        self._require_pending("cancel")
        self.state = RequestState.CANCELLED
        self.decided_at = now

    def expire(self, now: datetime) -> None:
        self._require_pending("expire")
        if not self.is_past_ttl(now):
            raise Conflict(f"request {self.id} is not past its pending TTL")
        self.state = RequestState.EXPIRED
        self.decided_at = now


@dataclass
class Grant:
    id: str
    request_id: str
    principal: str
    role: str
    target: str
    access_key: str
    starts_at: datetime
    ends_at: datetime
    created_at: datetime
    state: GrantState = GrantState.SCHEDULED
    ended_at: datetime | None = None
    end_reason: EndReason | None = None
    ended_by: str | None = None
    end_comment: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    failing_since: datetime | None = None
    flagged_at: datetime | None = None
    last_error: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # from the request, for the connector

    @property
    def due_at(self) -> datetime | None:
        """When the worker must next look at this grant; None once it has ended."""
        if self.state is GrantState.SCHEDULED:
            return self.starts_at
        if self.state is GrantState.ACTIVE:
            return self.ends_at
        if self.state in (GrantState.ACTIVATING, GrantState.REVOKING):
            return self.next_attempt_at or self.created_at
        return None

    @property
    def is_ending(self) -> bool:
        return self.state is GrantState.REVOKING

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_GRANT_STATES

    def covers(self, now: datetime) -> bool:
        """Access is in force now: provisioned and not past its end."""
        return self.state is GrantState.ACTIVE and self.starts_at <= now < self.ends_at

    def start_activating(self, now: datetime) -> None:
        if self.state is not GrantState.SCHEDULED:
            raise Conflict(f"grant {self.id} is {self.state.value}, not scheduled")
        self.state = GrantState.ACTIVATING
        self.next_attempt_at = now
        self._clear_failure()

    def mark_provisioned(self, now: datetime) -> None:
        if self.state is not GrantState.ACTIVATING:
            raise Conflict(f"grant {self.id} is {self.state.value}, not activating")
        self.state = GrantState.ACTIVE
        self.next_attempt_at = None
        self._clear_failure()
        if now >= self.ends_at:
            self.begin_end(EndReason.EXPIRED, now, actor="system")

    def begin_end(
        self, reason: EndReason, now: datetime, *, actor: str, comment: str | None = None
    ) -> None:
        """Move to revoking; the grant is marked ended only when the target confirms."""
        if self.state not in (GrantState.SCHEDULED, GrantState.ACTIVATING, GrantState.ACTIVE):
            raise Conflict(f"grant {self.id} is {self.state.value}: it is already ending or ended")
        # A worker may be provisioning it right now (its lease is in next_attempt_at): the
        # revoke waits for that worker, who hands it on when its provision lands, so the two
        # never run out of order.
        provisioning = (
            self.state is GrantState.ACTIVATING
            and self.next_attempt_at is not None
            and self.next_attempt_at > now
        )
        self.state = GrantState.REVOKING
        self.end_reason = reason
        self.ended_by = actor
        self.end_comment = comment
        self.next_attempt_at = self.next_attempt_at if provisioning else now
        self._clear_failure()

    def confirm_ended(self, now: datetime) -> None:
        if self.state is not GrantState.REVOKING or self.end_reason is None:
            raise Conflict(f"grant {self.id} is {self.state.value}, not revoking")
        self.state = _END_STATE[self.end_reason]
        self.ended_at = now
        self.next_attempt_at = None
        self._clear_failure()

    def reprovision(self, now: datetime) -> None:
        """Access shared with a grant that was just revoked: put it back (idempotent)."""
        if self.state is not GrantState.ACTIVE:
            raise Conflict(f"grant {self.id} is {self.state.value}, not active")
        self.state = GrantState.ACTIVATING
        self.next_attempt_at = now

    def extend_to(self, new_end: datetime) -> None:
        if self.state not in (GrantState.SCHEDULED, GrantState.ACTIVATING, GrantState.ACTIVE):
            raise Conflict(
                f"grant {self.id} is {self.state.value}: only a live grant can be extended"
            )
        if new_end <= self.ends_at:
            raise Conflict(f"grant {self.id} already ends at {self.ends_at.isoformat()}")
        self.ends_at = new_end

    def record_failure(
        self, now: datetime, error: str, *, retry_in: timedelta, flag_after: timedelta
    ) -> bool:
        """Note a connector failure and when to retry; True when the grant is newly flagged."""
        self.attempts += 1
        self.last_error = error[:500]
        self.failing_since = self.failing_since or now
        self.next_attempt_at = now + retry_in
        if self.flagged_at is None and now - self.failing_since >= flag_after:
            self.flagged_at = now
            return True
        return False

    def _clear_failure(self) -> None:
        self.attempts = 0
        self.failing_since = None
        self.flagged_at = None
        self.last_error = None


class ReviewState(StrEnum):
    OPEN = "open"
    SIGNED_OFF = "signed_off"


@dataclass
class Review:
    """A post-incident review of a break-glass activation; open until an approver signs off."""

    id: str
    kind: str  # "break-glass"
    request_id: str
    principal: str
    roles: tuple[str, ...]
    justification: str
    created_at: datetime
    state: ReviewState = ReviewState.OPEN
    signed_off_by: str | None = None
    signed_off_at: datetime | None = None
    comment: str | None = None

    def sign_off(self, by: str, comment: str, now: datetime) -> None:
        if self.state is not ReviewState.OPEN:
            raise Conflict(f"review {self.id} was already signed off by {self.signed_off_by}")
        self.state = ReviewState.SIGNED_OFF
        self.signed_off_by = by
        self.signed_off_at = now
        self.comment = comment


def retry_delay(
    attempt: int, *, base: float = 0.5, cap: float = 60.0, jitter: float = 1.0
) -> timedelta:
    """Exponential backoff capped at `cap` seconds, scaled into [50%, 100%] by `jitter` in [0, 1].

    The caller supplies `jitter` (random in production, fixed in tests) so the domain stays pure.
    """
    # The exponent is capped so thousands of failed attempts cannot overflow the float.
    delay = min(cap, base * (2 ** min(max(0, attempt - 1), 64)))
    return timedelta(seconds=delay * (0.5 + jitter / 2))
