"""The API's JSON shapes: request bodies as clients send them, responses built from domain objects.

Durations travel as text (`30m`, `PT1H`) and timestamps as UTC ISO 8601.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, field_validator

from jitaccess.domain.durations import format_duration, parse_duration
from jitaccess.domain.model import EndReason, Grant, GrantState, Request, RequestState
from jitaccess.services.check_access import AccessCheck
from jitaccess.services.request_access import RequestPreview


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]

DURATION_EXAMPLES = ["30m", "1h30m", "PT1H"]


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)  # raises ValueError, which names the field in the 422
    return value


# --- request bodies ---------------------------------------------------------------------------


class Body(BaseModel):
    # Unknown keys are refused, so a typo (`reason` for `justification`) never passes silently.
    model_config = ConfigDict(extra="forbid")


class RequestCreate(Body):
    roles: list[str] = Field(min_length=1, max_length=50, examples=[["demo/read"]])
    duration: str | None = Field(default=None, examples=DURATION_EXAMPLES)
    justification: str = ""
    ticket: str | None = None
    start_at: datetime | None = None

    @field_validator("duration")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        return _check_duration(value)

    def duration_value(self) -> timedelta | None:
        return parse_duration(self.duration) if self.duration is not None else None


class Decision(Body):
    comment: str = ""


class Extend(Body):
    duration: str = Field(examples=DURATION_EXAMPLES)
    justification: str = ""
    ticket: str | None = None

    @field_validator("duration")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_duration(value)
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
    approvers: list[str]
    min_approvals: int


class RequestPreviewOut(BaseModel):
    dry_run: Literal[True] = True
    roles: list[str]
    duration: str
    duration_seconds: int
    starts_at: UtcDatetime
    needs_approval: bool
    stages: list[StageOut]

    @classmethod
    def of(cls, preview: RequestPreview) -> RequestPreviewOut:
        return cls(
            roles=list(preview.roles),
            duration=format_duration(preview.duration),
            duration_seconds=int(preview.duration.total_seconds()),
            starts_at=preview.starts_at,
            needs_approval=preview.needs_approval,
            stages=[
                StageOut(
                    role=s.role,
                    stage=s.stage,
                    approvers=list(s.approvers),
                    min_approvals=s.min_approvals,
                )
                for s in preview.stages
            ],
        )


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
