"""The API's JSON shapes: request bodies as clients send them, responses built from domain objects.

Durations travel as text (`30m`, `PT1H`) and timestamps as UTC ISO 8601.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, field_validator

from jitaccess.domain.durations import format_duration, parse_duration
from jitaccess.domain.model import (
    EndReason,
    Grant,
    GrantState,
    Request,
    RequestState,
    Review,
    ReviewState,
)
from jitaccess.domain.policy import Target
from jitaccess.ports import DriftFinding, Notification, TargetHealth
from jitaccess.services.check_access import AccessCheck
from jitaccess.services.reconcile import ReconcileReport
from jitaccess.services.request_access import RequestPreview


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]

DURATION_EXAMPLES = ["30m", "1h30m", "PT1H"]


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_duration(value)  # raises ValueError, which names the field in the 422
        except OverflowError:
            # ... and lets timedelta's OverflowError out for "999999999999d", which would be a 500.
            raise ValueError(f"duration out of range: {value!r}") from None
    return value


# --- request bodies ---------------------------------------------------------------------------


class Body(BaseModel):
    # Unknown keys are refused, so a typo (`reason` for `justification`) never passes silently.
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL cannot store a NUL in text (SQLite can): refused here on both stores, it
        # never reaches a write, nor the audit record, whose failure would read as an outage.
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and "\x00" in text for text in texts):
            raise ValueError("text must not contain NUL characters")
        return value


class RequestCreate(Body):
    roles: list[str] = Field(min_length=1, max_length=50, examples=[["demo/read"]])
    duration: str | None = Field(default=None, examples=DURATION_EXAMPLES)
    justification: str = ""
    ticket: str | None = None
    start_at: datetime | None = None
    partial: bool = Field(
        default=False, description="a bundle may be granted for the roles that were approved"
    )
    break_glass: bool = Field(
        default=False, description="emergency: activate without approval; alerted and reviewed"
    )
    mfa_code: str | None = Field(
        default=None, description="a TOTP code, where a role requires MFA", examples=["123456"]
    )
    ssh_public_key: str | None = Field(
        default=None,
        max_length=16_384,
        description="an OpenSSH public key line; the grant's certificate (ssh targets) signs it",
        examples=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop"],
    )

    @field_validator("duration")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        return _check_duration(value)

    def duration_value(self) -> timedelta | None:
        return parse_duration(self.duration) if self.duration is not None else None


class Decision(Body):
    comment: str = ""
    mfa_code: str | None = Field(
        default=None, description="a TOTP code, where the stage requires MFA", examples=["123456"]
    )


class SignOff(Body):
    comment: str = Field(min_length=1, description="what the review found")


class Extend(Body):
    duration: str = Field(examples=DURATION_EXAMPLES)
    justification: str = ""
    ticket: str | None = None
    mfa_code: str | None = Field(
        default=None, description="a TOTP code, where the role requires MFA", examples=["123456"]
    )

    @field_validator("duration")
    @classmethod
    def _parses(cls, value: str) -> str:
        _check_duration(value)
        return value

    def duration_value(self) -> timedelta:
        return parse_duration(self.duration)


class Revoke(Body):
    reason: str = Field(validation_alias=AliasChoices("reason", "comment"))


class Deactivate(Body):
    comment: str = ""


class PolicyDocument(Body):
    yaml: str


# --- responses --------------------------------------------------------------------------------


class ApprovalOut(BaseModel):
    approver: str
    decision: str
    comment: str
    at: UtcDatetime


class RequestOut(BaseModel):
    id: str
    state: RequestState
    requester: str
    roles: list[str]
    duration: str
    duration_seconds: int
    justification: str
    ticket: str | None
    start_at: UtcDatetime | None
    created_at: UtcDatetime
    pending_until: UtcDatetime | None
    decided_at: UtcDatetime | None
    approvals: list[ApprovalOut]
    grants: list[str]
    extends_grant_id: str | None
    policy_version: int
    partial: bool
    break_glass: bool
    auto_approved: dict[str, str] = Field(description="role -> the auto-approve rule that fired")
    escalated: list[str] = Field(description="role#stage escalated to backup approvers")

    @classmethod
    def of(cls, request: Request) -> RequestOut:
        return cls(
            id=request.id,
            state=request.state,
            requester=request.requester,
            roles=list(request.roles),
            duration=format_duration(request.duration),
            duration_seconds=int(request.duration.total_seconds()),
            justification=request.justification,
            ticket=request.ticket,
            start_at=request.start_at,
            created_at=request.created_at,
            pending_until=request.pending_until,
            decided_at=request.decided_at,
            approvals=[
                ApprovalOut(
                    approver=a.approver, decision=a.decision.value, comment=a.comment, at=a.at
                )
                for a in request.approvals
            ],
            grants=list(request.grant_ids),
            extends_grant_id=request.extends_grant_id,
            policy_version=request.policy_version,
            partial=request.partial,
            break_glass=request.break_glass,
            auto_approved=dict(request.auto_approved),
            escalated=list(request.escalations),
        )


class GrantOut(BaseModel):
    id: str
    request_id: str
    principal: str
    role: str
    target: str
    state: GrantState
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    ended_at: UtcDatetime | None
    end_reason: EndReason | None
    ended_by: str | None
    end_comment: str | None
    attempts: int
    last_error: str | None
    flagged: bool
    flagged_at: UtcDatetime | None

    @classmethod
    def of(cls, grant: Grant) -> GrantOut:
        return cls(
            id=grant.id,
            request_id=grant.request_id,
            principal=grant.principal,
            role=grant.role,
            target=grant.target,
            state=grant.state,
            starts_at=grant.starts_at,
            ends_at=grant.ends_at,
            ended_at=grant.ended_at,
            end_reason=grant.end_reason,
            ended_by=grant.ended_by,
            end_comment=grant.end_comment,
            attempts=grant.attempts,
            last_error=grant.last_error,
            flagged=grant.flagged_at is not None,
            flagged_at=grant.flagged_at,
        )


class RequestList(BaseModel):
    items: list[RequestOut]


class GrantList(BaseModel):
    items: list[GrantOut]


class StageOut(BaseModel):
    role: str
    stage: str
    approvers: list[str] = Field(description="as the policy names them")
    people: list[str] = Field(description="who may decide today (never the requester)")
    min_approvals: int
    all_groups: bool
    escalate_after: str | None
    escalate_to: list[str]
    mfa: bool


class RequestPreviewOut(BaseModel):
    dry_run: Literal[True] = True
    outcome: Literal["granted", "pending", "break-glass"]
    roles: list[str]
    duration: str
    duration_seconds: int
    starts_at: UtcDatetime
    needs_approval: bool
    mfa_required: bool
    auto_approved: dict[str, str]
    break_glass: bool
    stages: list[StageOut]

    @classmethod
    def of(cls, preview: RequestPreview) -> RequestPreviewOut:
        return cls(
            outcome=preview.outcome,
            roles=list(preview.roles),
            duration=format_duration(preview.duration),
            duration_seconds=int(preview.duration.total_seconds()),
            starts_at=preview.starts_at,
            needs_approval=preview.needs_approval,
            mfa_required=preview.mfa_required,
            auto_approved=dict(preview.auto_approved),
            break_glass=preview.break_glass,
            stages=[
                StageOut(
                    role=s.role,
                    stage=s.stage,
                    approvers=list(s.approvers),
                    people=list(s.people),
                    min_approvals=s.min_approvals,
                    all_groups=s.all_groups,
                    escalate_after=format_duration(s.escalate_after) if s.escalate_after else None,
                    escalate_to=list(s.escalate_to),
                    mfa=s.mfa,
                )
                for s in preview.stages
            ],
        )


class ReviewOut(BaseModel):
    id: str
    kind: str
    request_id: str
    principal: str
    roles: list[str]
    justification: str
    created_at: UtcDatetime
    state: ReviewState
    signed_off_by: str | None
    signed_off_at: UtcDatetime | None
    comment: str | None

    @classmethod
    def of(cls, review: Review) -> ReviewOut:
        return cls(
            id=review.id,
            kind=review.kind,
            request_id=review.request_id,
            principal=review.principal,
            roles=list(review.roles),
            justification=review.justification,
            created_at=review.created_at,
            state=review.state,
            signed_off_by=review.signed_off_by,
            signed_off_at=review.signed_off_at,
            comment=review.comment,
        )


class ReviewList(BaseModel):
    items: list[ReviewOut]


class NotificationOut(BaseModel):
    id: str
    kind: str
    subject: str
    message: str
    created_at: UtcDatetime
    data: dict[str, Any]

    @classmethod
    def of(cls, notification: Notification) -> NotificationOut:
        return cls(
            id=notification.id,
            kind=notification.kind,
            subject=notification.subject,
            message=notification.message,
            created_at=notification.created_at,
            data=dict(notification.data),
        )


class NotificationList(BaseModel):
    items: list[NotificationOut]


class ExtensionOut(BaseModel):
    grant: GrantOut
    request: RequestOut | None
    pending_approval: bool


class AccessCheckOut(BaseModel):
    principal: str
    role: str
    active: bool
    until: UtcDatetime | None
    grants: list[str]

    @classmethod
    def of(cls, check: AccessCheck) -> AccessCheckOut:
        return cls(
            principal=check.principal,
            role=check.role,
            active=check.active,
            until=check.until,
            grants=list(check.grant_ids),
        )


class AuditList(BaseModel):
    items: list[dict[str, Any]]


class VerificationOut(BaseModel):
    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str | None
    head: str


class PolicyOut(BaseModel):
    version: int
    digest: str
    applied_at: UtcDatetime
    applied_by: str
    document: dict[str, Any]


class PolicyApplied(BaseModel):
    version: int
    changed: bool


class Problem(BaseModel):
    """RFC 9457 problem details, as every error response carries them."""

    type: str
    title: str
    status: int
    detail: str
    rule: str | None = None
    field: str | None = None
    problems: list[dict[str, Any]] | None = None


class Status(BaseModel):
    status: str


class TargetOut(BaseModel):
    name: str
    type: str
    drift: str
    checked_at: UtcDatetime | None
    ok: bool | None
    error: str | None
    reconciled_at: UtcDatetime | None
    open_drift: int

    @classmethod
    def of(cls, target: Target, health: TargetHealth | None, open_drift: int) -> TargetOut:
        return cls(
            name=target.name,
            type=target.type,
            drift=target.drift.value,
            checked_at=health.checked_at if health else None,
            ok=health.ok if health else None,
            error=health.error if health else None,
            reconciled_at=health.reconciled_at if health else None,
            open_drift=open_drift,
        )


class TargetList(BaseModel):
    items: list[TargetOut]


class DriftOut(BaseModel):
    id: str
    target: str
    kind: str
    account: str
    principal: str | None
    grant_id: str | None
    detail: dict[str, Any]
    found_at: UtcDatetime
    last_seen_at: UtcDatetime
    state: str
    resolved_at: UtcDatetime | None

    @classmethod
    def of(cls, finding: DriftFinding) -> DriftOut:
        return cls(
            id=finding.id,
            target=finding.target,
            kind=finding.kind,
            account=finding.account,
            principal=finding.principal,
            grant_id=finding.grant_id,
            detail=dict(finding.detail),
            found_at=finding.found_at,
            last_seen_at=finding.last_seen_at,
            state=finding.state,
            resolved_at=finding.resolved_at,
        )


class DriftList(BaseModel):
    items: list[DriftOut]


class TargetReportOut(BaseModel):
    target: str
    ok: bool
    error: str | None
    skipped: bool
    listed: int
    unexplained: list[str]
    removed: list[str]
    missing: list[str]


class ReconcileOut(BaseModel):
    unexplained: int
    removed: int
    missing: int
    targets: list[TargetReportOut]

    @classmethod
    def of(cls, report: ReconcileReport) -> ReconcileOut:
        return cls(
            unexplained=report.unexplained,
            removed=report.removed,
            missing=report.missing,
            targets=[TargetReportOut(**t.__dict__) for t in report.targets],
        )
