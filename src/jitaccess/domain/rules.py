"""The rules a request must meet before it exists: eligibility, duration, requirements, start."""

from __future__ import annotations

from datetime import datetime, timedelta

from jitaccess.domain.durations import format_duration
from jitaccess.domain.errors import InvalidInput, NotEligible, PolicyViolation
from jitaccess.domain.policy import Policy, Role

MAX_JUSTIFICATION = 2000
MAX_TICKET = 200
START_AT_TOLERANCE = timedelta(minutes=1)
MAX_SCHEDULE_AHEAD = timedelta(days=90)


def resolve_roles(policy: Policy, roles: list[str] | tuple[str, ...]) -> tuple[Role, ...]:
    if not roles:
        raise InvalidInput("at least one role is required", field="roles")
    if len(set(roles)) != len(roles):
        raise InvalidInput("a role is named twice", field="roles")
    unknown = [r for r in roles if r not in policy.roles]
    if unknown:
        raise InvalidInput(f"unknown role(s): {', '.join(unknown)}", field="roles")
    return tuple(policy.roles[r] for r in roles)


def check_eligible(policy: Policy, principal: str, roles: tuple[Role, ...], now: datetime) -> None:
    for role in roles:
        if not policy.is_eligible(principal, role.name, now.date()):
            raise NotEligible(
                f"{principal} is not eligible for {role.name}", rule=f"eligibility:{role.name}"
            )


def effective_duration(roles: tuple[Role, ...], asked: timedelta | None) -> timedelta:
    """The asked duration, or the smallest default; it must fit every role's min and max."""
    duration = asked if asked is not None else min(r.duration.default for r in roles)
    for role in roles:
        if duration > role.duration.max:
            raise PolicyViolation(
                f"{format_duration(duration)} is longer than {role.name} allows "
                f"(max {format_duration(role.duration.max)})",
                rule=f"roles.{role.name}.duration.max",
            )
        if duration < role.duration.min:
            raise PolicyViolation(
                f"{format_duration(duration)} is shorter than {role.name} allows "
                f"(min {format_duration(role.duration.min)})",
                rule=f"roles.{role.name}.duration.min",
            )
    return duration


def check_requirements(
    roles: tuple[Role, ...], justification: str, ticket: str | None, *, mfa_verified: bool = False
) -> None:
    if len(justification) > MAX_JUSTIFICATION:
        raise InvalidInput(
            f"justification is longer than {MAX_JUSTIFICATION} characters", field="justification"
        )
    if ticket is not None and len(ticket) > MAX_TICKET:
        raise InvalidInput(f"ticket is longer than {MAX_TICKET} characters", field="ticket")
    for role in roles:
        need = role.require
        if need.justification and not justification.strip():
            raise PolicyViolation(
                f"{role.name} requires a justification",
                rule=f"roles.{role.name}.require.justification",
            )
        if (
            need.justification_min_length
            and len(justification.strip()) < need.justification_min_length
        ):
            raise PolicyViolation(
                f"{role.name} requires a justification of at least "
                f"{need.justification_min_length} characters",
                rule=f"roles.{role.name}.require.justification_min_length",
            )
        pattern = need.ticket_pattern()
        if pattern is not None and (ticket is None or not pattern.fullmatch(ticket)):
            raise PolicyViolation(
                f"{role.name} requires a ticket matching {need.ticket!r}",
                rule=f"roles.{role.name}.require.ticket",
            )
        if need.mfa and not mfa_verified:
            # Deny by default: without a verified second factor a role that needs one stays shut.
            raise PolicyViolation(
                f"{role.name} requires MFA step-up, which this request did not provide",
                rule=f"roles.{role.name}.require.mfa",
            )


def check_allowed_hours(roles: tuple[Role, ...], at: datetime) -> None:
    """A role with allowed hours activates only inside them (checked at the grant's start)."""
    for role in roles:
        hours = role.require.allowed_hours
        if hours is not None and not hours.allows(at):
            raise PolicyViolation(
                f"{role.name} may only be activated {hours.describe()}",
                rule=f"roles.{role.name}.require.allowed_hours",
            )


def check_max_active(role: Role, live: int) -> None:
    """At most `max_active` live grants of a role at once (counted before adding one)."""
    if role.max_active is not None and live >= role.max_active:
        raise PolicyViolation(
            f"{role.name} already has {live} live grant(s); the policy allows {role.max_active}",
            rule=f"roles.{role.name}.max_active",
        )


def is_break_glass(roles: tuple[Role, ...], asked: bool) -> bool:
    """Asked for, or forced by a role marked break_glass (every activation is an emergency)."""
    return asked or any(role.break_glass for role in roles)


def break_glass_duration(
    policy: Policy,
    principal: str,
    roles: tuple[Role, ...],
    asked: timedelta | None,
    justification: str,
) -> timedelta:
    """The rules of an emergency activation; returns the duration it may last."""
    for role in roles:
        if not policy.may_break_glass(principal, role):
            raise PolicyViolation(
                f"{role.name} cannot be activated break-glass by {principal}: neither the role "
                "nor the user is marked break_glass",
                rule=f"roles.{role.name}.break_glass",
            )
    need = max(1, policy.break_glass.justification_min_length)
    if len(justification.strip()) < need:
        raise PolicyViolation(
            f"break-glass needs a justification of at least {need} characters",
            rule="break_glass.justification_min_length",
        )
    cap = policy.break_glass.max_duration
    duration = asked if asked is not None else min(cap, *(r.duration.default for r in roles))
    if duration > cap:
        raise PolicyViolation(
            f"break-glass lasts at most {format_duration(cap)}, not {format_duration(duration)}",
            rule="break_glass.max_duration",
        )
    return effective_duration(roles, duration)


def check_start(start_at: datetime | None, now: datetime) -> datetime:
    """When the grant may start: now, or a scheduled time in the (near) future."""
    if start_at is None:
        return now
    if start_at.tzinfo is None:
        raise InvalidInput("start_at must carry a time zone (UTC ISO 8601)", field="start_at")
    if start_at < now - START_AT_TOLERANCE:
        raise InvalidInput("start_at is in the past", field="start_at")
    if start_at > now + MAX_SCHEDULE_AHEAD:
        raise InvalidInput("start_at is more than 90 days ahead", field="start_at")
    return max(start_at, now)


def pending_deadline(roles: tuple[Role, ...], now: datetime) -> datetime | None:
    ttls = [r.approval.pending_ttl for r in roles if r.approval is not None]
    return now + min(ttls) if ttls else None


def extension_end(role: Role, starts_at: datetime, ends_at: datetime, extra: timedelta) -> datetime:
    """The new end of an extended grant; the whole grant still fits the role's max."""
    new_end = ends_at + extra
    if new_end - starts_at > role.duration.max:
        raise PolicyViolation(
            f"extending by {format_duration(extra)} would make the grant longer than {role.name} "
            f"allows (max {format_duration(role.duration.max)} from its start)",
            rule=f"roles.{role.name}.duration.max",
        )
    return new_end
