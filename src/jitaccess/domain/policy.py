"""The policy model: who exists, what can be granted, who may ask, and what an ask needs.

Built by the YAML loader (adapters/policy_yaml.py) after validation; frozen so a loaded policy
version never changes under a running request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import Any


class PrincipalKind(StrEnum):
    USER = "user"
    SERVICE = "service"


@dataclass(frozen=True)
class User:
    name: str
    kind: PrincipalKind = PrincipalKind.USER
    email: str | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrincipalRef:
    """`user:alice` or `group:dba` as written in policy."""

    kind: str  # "user" | "group"
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @staticmethod
    def parse(text: str) -> PrincipalRef:
        kind, sep, name = text.partition(":")
        if not sep or kind not in ("user", "group") or not name:
            raise ValueError(f"expected user:NAME or group:NAME, got {text!r}")
        return PrincipalRef(kind, name)


@dataclass(frozen=True)
class ConnectionRef:
    """Where a target's admin credentials live: an env var or a file, never inline."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


@dataclass(frozen=True)
class Target:
    name: str
    type: str
    connection: ConnectionRef | None = None
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class DurationPolicy:
    default: timedelta
    max: timedelta
    min: timedelta = timedelta(seconds=1)


@dataclass(frozen=True)
class Requirements:
    justification: bool = False
    justification_min_length: int = 0
    ticket: str | None = None  # a regex the ticket must match in full
    mfa: bool = False

    def ticket_pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.ticket) if self.ticket else None


class OnExtend(StrEnum):
    REQUIRED = "required"
    NOT_REQUIRED = "not_required"


@dataclass(frozen=True)
class Stage:
    name: str
    approvers: tuple[PrincipalRef, ...]
    min_approvals: int = 1
    all_groups: bool = False
    deny_threshold: int = 1
    escalate_after: timedelta | None = None
    escalate_to: tuple[PrincipalRef, ...] = ()


@dataclass(frozen=True)
class ApprovalPolicy:
    stages: tuple[Stage, ...]
    pending_ttl: timedelta = timedelta(hours=24)
    on_extend: OnExtend = OnExtend.REQUIRED


@dataclass(frozen=True)
class Role:
    name: str
    target: str
    grants: tuple[tuple[str, Any], ...]
    duration: DurationPolicy
    require: Requirements = Requirements()
    approval: ApprovalPolicy | None = None
    description: str = ""

    def grants_dict(self) -> dict[str, Any]:
        return dict(self.grants)


@dataclass(frozen=True)
class Eligibility:
    principals: tuple[PrincipalRef, ...]
    roles: tuple[str, ...]
    valid_from: date | None = None
    valid_until: date | None = None

    def is_open_on(self, day: date) -> bool:
        if self.valid_from and day < self.valid_from:
            return False
        return not (self.valid_until and day > self.valid_until)


@dataclass(frozen=True)
class Policy:
    users: dict[str, User] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    eligibility: tuple[Eligibility, ...] = ()
    admins: tuple[PrincipalRef, ...] = ()
    auditors: tuple[PrincipalRef, ...] = ()

    # --- who is who -------------------------------------------------------------------------
    def groups_of(self, principal: str) -> frozenset[str]:
        user = self.users.get(principal)
        return frozenset(user.groups) if user else frozenset()

    def matches(self, principal: str, ref: PrincipalRef) -> bool:
        if ref.kind == "user":
            return ref.name == principal
        return ref.name in self.groups_of(principal)

    def matches_any(self, principal: str, refs: tuple[PrincipalRef, ...]) -> bool:
        return any(self.matches(principal, ref) for ref in refs)

    def is_admin(self, principal: str) -> bool:
        return self.matches_any(principal, self.admins)

    def is_auditor(self, principal: str) -> bool:
        return self.matches_any(principal, self.auditors)

    def can_read_everything(self, principal: str) -> bool:
        return self.is_admin(principal) or self.is_auditor(principal)

    # --- eligibility ------------------------------------------------------------------------
    def is_eligible(self, principal: str, role: str, today: date) -> bool:
        """Deny by default: only an eligibility row naming the principal (or a group) opens it."""
        if principal not in self.users or role not in self.roles:
            return False
        return any(
            role in row.roles
            and row.is_open_on(today)
            and self.matches_any(principal, row.principals)
            for row in self.eligibility
        )

    def eligible_roles(self, principal: str, today: date) -> list[str]:
        return sorted(r for r in self.roles if self.is_eligible(principal, r, today))

    # --- approvals --------------------------------------------------------------------------
    def stage_approvers(self, stage: Stage, *, escalated: bool) -> tuple[PrincipalRef, ...]:
        return stage.approvers + (stage.escalate_to if escalated else ())
