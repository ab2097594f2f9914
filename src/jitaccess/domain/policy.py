"""The policy model: who exists, what can be granted, who may ask, and what an ask needs.

Built by the YAML loader (adapters/policy_yaml.py) after validation, or from a stored version's
document (adapters/policy_document.py); frozen so a loaded version never changes under a running
request. The objects that exist once per eligibility row or user have slots: a policy can hold
a million rows.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo


class PrincipalKind(StrEnum):
    USER = "user"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    kind: PrincipalKind = PrincipalKind.USER
    email: str | None = None
    groups: tuple[str, ...] = ()
    break_glass: bool = False  # may activate any role they are eligible for in an emergency


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class ConnectionRef:
    """Where a target's admin credentials live: an env var or a file, never inline."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


class DriftAction(StrEnum):
    REPORT = "report"  # alert and audit access no grant explains
    REMOVE = "remove"  # ... and take it away


@dataclass(frozen=True)
class Target:
    name: str
    type: str
    connection: ConnectionRef | None = None
    options: tuple[tuple[str, Any], ...] = ()
    drift: DriftAction = DriftAction.REPORT


@dataclass(frozen=True)
class DurationPolicy:
    default: timedelta
    max: timedelta
    min: timedelta = timedelta(seconds=1)


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class AllowedHours:
    """When a role may be activated: on `days` (0 = Monday), from `start` to `end` local time in
    `tz`. An `end` before `start` runs past midnight into the next day (equal is refused)."""

    days: frozenset[int]
    start: time
    end: time
    tz: str

    def allows(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.tz))
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return local.weekday() in self.days and self.start <= clock < self.end
        # Overnight window: the evening part belongs to its own day, the morning to the day before.
        if clock >= self.start:
            return local.weekday() in self.days
        return clock < self.end and (local.weekday() - 1) % 7 in self.days

    def describe(self) -> str:
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.tz}"


@dataclass(frozen=True)
class Requirements:
    justification: bool = False
    justification_min_length: int = 0
    ticket: str | None = None  # a regex the ticket must match in full
    mfa: bool = False  # a TOTP code with the request
    allowed_hours: AllowedHours | None = None

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
    mfa: bool = False  # approvers of this stage give a TOTP code with their decision


@dataclass(frozen=True)
class AutoApproveRule:
    """Conditions that together approve a role without people; any rule that holds fires."""

    name: str
    on_call: str | None = None  # a schedule name: the requester is on call now
    groups: tuple[str, ...] = ()  # the requester is in one of these groups
    max_duration: timedelta | None = None  # the request asks for at most this long
    ticket: str | None = None  # the ticket matches this regex in full

    def ticket_pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.ticket) if self.ticket else None


@dataclass(frozen=True)
class ApprovalPolicy:
    stages: tuple[Stage, ...]
    pending_ttl: timedelta = timedelta(hours=24)
    on_extend: OnExtend = OnExtend.REQUIRED
    distinct_stage_approvers: bool = True  # nobody approves two stages of one request
    auto_approve: tuple[AutoApproveRule, ...] = ()


@dataclass(frozen=True)
class Role:
    name: str
    target: str
    grants: tuple[tuple[str, Any], ...]
    duration: DurationPolicy
    require: Requirements = Requirements()
    approval: ApprovalPolicy | None = None
    description: str = ""
    max_active: int | None = None  # live grants of this role at once, across principals
    break_glass: bool = False  # every activation is an emergency: no approval, alert, review

    def grants_dict(self) -> dict[str, Any]:
        return dict(self.grants)


@dataclass(frozen=True, slots=True)
class Eligibility:
    principals: tuple[PrincipalRef, ...]
    roles: tuple[str, ...]
    valid_from: date | None = None
    valid_until: date | None = None

    def is_open_on(self, day: date) -> bool:
        if self.valid_from and day < self.valid_from:
            return False
        return not (self.valid_until and day > self.valid_until)


@dataclass(frozen=True, slots=True)
class OnCallSchedule:
    """An on-call schedule file (YAML or iCalendar), read when a rule needs it."""

    name: str
    file: str


@dataclass(frozen=True)
class BreakGlassPolicy:
    max_duration: timedelta = timedelta(hours=1)
    justification_min_length: int = 20


@dataclass(frozen=True)
class Policy:
    users: dict[str, User] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    eligibility: tuple[Eligibility, ...] = ()
    admins: tuple[PrincipalRef, ...] = ()
    auditors: tuple[PrincipalRef, ...] = ()
    schedules: dict[str, OnCallSchedule] = field(default_factory=dict)
    break_glass: BreakGlassPolicy = BreakGlassPolicy()

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

    @functools.cached_property
    def _members(self) -> dict[str, list[str]]:
        members: dict[str, list[str]] = {}
        for name, user in self.users.items():
            for group in user.groups:
                members.setdefault(group, []).append(name)
        return members

    def people(self, refs: tuple[PrincipalRef, ...]) -> list[str]:
        """The users the references name, groups expanded, sorted."""
        found: set[str] = set()
        for ref in refs:
            if ref.kind == "user" and ref.name in self.users:
                found.add(ref.name)
            elif ref.kind == "group":
                found.update(self._members.get(ref.name, ()))
        return sorted(found)

    def find_user(self, identifier: str) -> str | None:
        """The user a schedule names, by user name or e-mail (case-insensitive)."""
        if identifier in self.users:
            return identifier
        wanted = identifier.casefold()
        for name, user in self.users.items():
            if user.email and user.email.casefold() == wanted:
                return name
        return None

    # --- eligibility ------------------------------------------------------------------------
    @functools.cached_property
    def _eligibility_index(self) -> dict[str, dict[PrincipalRef, Eligibility | list[Eligibility]]]:
        """role -> principal -> the row (or rows) that open it: a lookup per request stays
        O(groups of the principal), not O(rows), with a million eligibility rows. A key's one
        row is held bare, not in a list of one: most keys have one, and a list costs 88 bytes."""
        index: dict[str, dict[PrincipalRef, Eligibility | list[Eligibility]]] = {}
        for row in self.eligibility:
            for role in row.roles:
                by_principal = index.get(role)
                if by_principal is None:
                    by_principal = index[role] = {}
                for ref in row.principals:
                    found = by_principal.get(ref)
                    if found is None:
                        by_principal[ref] = row
                    elif isinstance(found, list):
                        found.append(row)
                    else:
                        by_principal[ref] = [found, row]
        return index

    def build_indexes(self) -> None:
        """Build the lookup indexes now rather than on the first request that needs them (a
        second with a million rows)."""
        _ = self._eligibility_index, self._members

    def is_eligible(self, principal: str, role: str, today: date) -> bool:
        """Deny by default: only an eligibility row naming the principal (or a group) opens it."""
        if principal not in self.users or role not in self.roles:
            return False
        by_principal = self._eligibility_index.get(role)
        if not by_principal:
            return False
        refs = [PrincipalRef("user", principal)]
        refs += [PrincipalRef("group", group) for group in self.groups_of(principal)]
        for ref in refs:
            found = by_principal.get(ref)
            if found is None:
                continue
            rows = found if isinstance(found, list) else (found,)
            if any(row.is_open_on(today) for row in rows):
                return True
        return False

    def eligible_roles(self, principal: str, today: date) -> list[str]:
        return sorted(r for r in self.roles if self.is_eligible(principal, r, today))

    # --- approvals --------------------------------------------------------------------------
    def stage_approvers(self, stage: Stage, *, escalated: bool) -> tuple[PrincipalRef, ...]:
        return stage.approvers + (stage.escalate_to if escalated else ())

    def role_approvers(self, role: Role) -> list[str]:
        """Everyone who may decide some stage of `role`, backups included."""
        refs: tuple[PrincipalRef, ...] = ()
        for stage in role.approval.stages if role.approval else ():
            refs += stage.approvers + stage.escalate_to
        return self.people(refs)

    def may_break_glass(self, principal: str, role: Role) -> bool:
        user = self.users.get(principal)
        return role.break_glass or (user is not None and user.break_glass)
