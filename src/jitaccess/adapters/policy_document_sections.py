"""Readers for a stored policy document's sections and values (policy_document_reader.py).

Each checks the shape it needs and builds the domain object as the YAML loader builds it from
the same data, or raises `Unbuildable` with the key path and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jitaccess.adapters.policy_schema import (
    APPROVAL_KEYS,
    AUTO_KEYS,
    BREAK_GLASS_KEYS,
    CLOCK_TIME,
    DEFAULT_DURATION,
    DURATION_KEYS,
    HOURS_KEYS,
    REQUIRE_KEYS,
    ROLE_KEYS,
    STAGE_KEYS,
    TARGET_KEYS,
    USER_KEYS,
)
from jitaccess.domain.durations import parse_duration
from jitaccess.domain.policy import (
    DAY_NAMES,
    AllowedHours,
    ApprovalPolicy,
    AutoApproveRule,
    BreakGlassPolicy,
    ConnectionRef,
    DriftAction,
    DurationPolicy,
    OnExtend,
    PrincipalKind,
    PrincipalRef,
    Requirements,
    Role,
    Stage,
    Target,
    User,
)

RefReader = Callable[[Any, str], PrincipalRef]
NameReader = Callable[[Any, str], tuple[str, ...]]


class Unbuildable(Exception):
    """A value the build cannot use: where (`path`) and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


# --- sections --------------------------------------------------------------------------------
def read_user(name: str, value: Any, path: str, names: NameReader) -> User:
    fields = as_mapping(value, path, USER_KEYS, nullable=True)
    kind = _choice(fields, "kind", path, PrincipalKind) or PrincipalKind.USER
    email = as_text(fields["email"], join(path, "email")) if "email" in fields else None
    groups = names(fields["groups"], join(path, "groups")) if "groups" in fields else ()
    return User(name, kind, email, groups, _flag_of(fields, "break_glass", path))


def read_target(name: str, value: Any, path: str) -> Target:
    fields = as_mapping(value, path, TARGET_KEYS)
    kind = as_text(required_value(fields, "type", path), join(path, "type"))
    connection = None
    if "connection" in fields:
        where = join(path, "connection")
        ref = as_mapping(fields["connection"], where, ("env", "file"))
        if len(ref) != 1:
            raise Unbuildable(where, "needs exactly one of env or file")
        key, text = next(iter(ref.items()))
        if not as_text(text, join(where, key)):
            raise Unbuildable(join(where, key), "must not be empty")
        connection = ConnectionRef(env=text) if key == "env" else ConnectionRef(file=text)
    options = (
        _plain_mapping(fields["options"], join(path, "options")) if "options" in fields else ()
    )
    drift = _choice(fields, "drift", path, DriftAction) or DriftAction.REPORT
    return Target(name, kind, connection, options, drift)


def read_role(name: str, value: Any, path: str, ref: RefReader) -> Role:
    fields = as_mapping(value, path, ROLE_KEYS)
    target = as_text(required_value(fields, "target", path), join(path, "target"))
    grants = _plain_mapping(fields["grants"], join(path, "grants")) if "grants" in fields else ()
    duration = (
        _durations(fields["duration"], join(path, "duration"))
        if "duration" in fields
        else DEFAULT_DURATION
    )
    require = (
        _requirements(fields["require"], join(path, "require"))
        if "require" in fields
        else Requirements()
    )
    approval = (
        _approval(fields["approval"], join(path, "approval"), ref) if "approval" in fields else None
    )
    description = (
        as_text(fields["description"], join(path, "description")) if "description" in fields else ""
    )
    max_active = _positive_of(fields, "max_active", path)
    return Role(
        name,
        target,
        grants,
        duration,
        require,
        approval,
        description,
        max_active,
        _flag_of(fields, "break_glass", path),
    )


def _durations(value: Any, path: str) -> DurationPolicy:
    fields = as_mapping(value, path, DURATION_KEYS)
    default = _duration(required_value(fields, "default", path), join(path, "default"))
    high = _duration(required_value(fields, "max", path), join(path, "max"))
    low = _duration_of(fields, "min", path) or timedelta(seconds=1)
    if not low <= default <= high:
        raise Unbuildable(path, "needs min <= default <= max")
    return DurationPolicy(default=default, max=high, min=low)


def _requirements(value: Any, path: str) -> Requirements:
    fields = as_mapping(value, path, REQUIRE_KEYS, nullable=True)
    hours = fields.get("allowed_hours")
    return Requirements(
        justification=_flag_of(fields, "justification", path),
        justification_min_length=as_integer(
            fields.get("justification_min_length", 0), join(path, "justification_min_length"), 0
        ),
        ticket=_ticket(fields["ticket"], join(path, "ticket")) if "ticket" in fields else None,
        mfa=_flag_of(fields, "mfa", path),
        allowed_hours=(
            _allowed_hours(hours, join(path, "allowed_hours"))
            if "allowed_hours" in fields
            else None
        ),
    )


def _allowed_hours(value: Any, path: str) -> AllowedHours | None:
    fields = as_mapping(value, path, HOURS_KEYS)
    days = _days(required_value(fields, "days", path), join(path, "days"))
    start = _clock(required_value(fields, "from", path), join(path, "from"))
    end = _clock(required_value(fields, "to", path), join(path, "to"))
    tz = as_text(required_value(fields, "tz", path), join(path, "tz"))
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise Unbuildable(join(path, "tz"), f"unknown time zone {tz!r}") from None
    if start == end:
        raise Unbuildable(join(path, "to"), "must differ from `from`")
    # An empty list of days reads as no window at all, as the YAML loader reads it.
    return AllowedHours(days, start, end, tz) if days else None


def _days(value: Any, path: str) -> frozenset[int]:
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
    else:
        parts = [as_text(item, path) for item in as_list(value, path)]
    found: set[int] = set()
    for part in parts:
        low, _, high = part.lower().partition("-")
        if low not in DAY_NAMES or (high and high not in DAY_NAMES):
            raise Unbuildable(path, f"{part!r} is not a day or range like mon-fri")
        first, last = DAY_NAMES.index(low), DAY_NAMES.index(high or low)
        found.update(d % 7 for d in range(first, last + 1 if last >= first else last + 8))
    return frozenset(found)


def _clock(value: Any, path: str) -> time:
    matched = CLOCK_TIME.fullmatch(as_text(value, path))
    if matched is None:
        raise Unbuildable(path, f"expected a time like 08:00, got {value!r}")
    return time(int(matched.group(1)), int(matched.group(2)))


def _approval(value: Any, path: str, ref: RefReader) -> ApprovalPolicy:
    fields = as_mapping(value, path, APPROVAL_KEYS)
    where = join(path, "stages")
    listed = as_list(required_value(fields, "stages", path), where, nonempty=True)
    stages = tuple(_stage(item, f"{where}[{i}]", ref) for i, item in enumerate(listed))
    where = join(path, "auto_approve")
    listed = as_list(fields["auto_approve"], where) if "auto_approve" in fields else []
    rules = tuple(_auto_rule(item, f"{where}[{i}]") for i, item in enumerate(listed))
    distinct = fields.get("distinct_stage_approvers", True)
    return ApprovalPolicy(
        stages=stages,
        pending_ttl=_duration_of(fields, "pending_ttl", path) or timedelta(hours=24),
        on_extend=_choice(fields, "on_extend", path, OnExtend) or OnExtend.REQUIRED,
        distinct_stage_approvers=_flag(distinct, join(path, "distinct_stage_approvers")),
        auto_approve=rules,
    )


def _stage(value: Any, path: str, ref: RefReader) -> Stage:
    fields = as_mapping(value, path, STAGE_KEYS)
    after = _duration_of(fields, "escalate_after", path)
    if ("escalate_after" in fields) != ("escalate_to" in fields):
        raise Unbuildable(path, "escalate_after and escalate_to go together")
    approvers = required_value(fields, "approvers", path)
    escalate_to = fields.get("escalate_to")
    return Stage(
        name=as_text(required_value(fields, "name", path), join(path, "name")),
        approvers=as_refs(approvers, join(path, "approvers"), ref, required=True),
        min_approvals=_positive_of(fields, "min_approvals", path) or 1,
        all_groups=_flag_of(fields, "all_groups", path),
        deny_threshold=_positive_of(fields, "deny_threshold", path) or 1,
        escalate_after=after,
        escalate_to=(
            as_refs(escalate_to, join(path, "escalate_to"), ref, required=True)
            if "escalate_to" in fields
            else ()
        ),
        mfa=_flag_of(fields, "mfa", path),
    )


def _auto_rule(value: Any, path: str) -> AutoApproveRule:
    fields = as_mapping(value, path, AUTO_KEYS)
    conditions = [key for key in AUTO_KEYS if key != "name" and key in fields]
    if not conditions:
        raise Unbuildable(path, "a rule needs at least one condition")
    name = as_text(fields["name"], join(path, "name")) if "name" in fields else ""
    where = join(path, "groups")
    groups = as_list(fields["groups"], where, nonempty=True) if "groups" in fields else []
    on_call = fields.get("on_call")
    return AutoApproveRule(
        name=name or "+".join(conditions),
        on_call=as_text(on_call, join(path, "on_call")) if "on_call" in fields else None,
        groups=tuple(as_text(group, f"{where}[{i}]") for i, group in enumerate(groups)),
        max_duration=_duration_of(fields, "max_duration", path),
        ticket=_ticket(fields["ticket"], join(path, "ticket")) if "ticket" in fields else None,
    )


def read_break_glass(value: Any) -> BreakGlassPolicy:
    fields = as_mapping(value, "break_glass", BREAK_GLASS_KEYS)
    default = BreakGlassPolicy()
    return BreakGlassPolicy(
        max_duration=_duration_of(fields, "max_duration", "break_glass") or default.max_duration,
        justification_min_length=_positive_of(fields, "justification_min_length", "break_glass")
        or default.justification_min_length,
    )


# --- values ----------------------------------------------------------------------------------
def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]


def as_mapping(
    value: Any, path: str, allowed: tuple[str, ...], *, nullable: bool = False
) -> Mapping[str, Any]:
    if value is None and nullable:
        return {}
    if not isinstance(value, Mapping):
        raise Unbuildable(path, f"expected a mapping, got {describe(value)}")
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise Unbuildable(join(path, str(unknown[0])), f"unknown key {unknown[0]!r}")
    return value


def named_entries(value: Any, path: str) -> list[tuple[str, Any]]:
    """A name-keyed section (users, targets, roles, schedules); null or absent is empty."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise Unbuildable(path, f"expected a mapping, got {describe(value)}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise Unbuildable(path, f"bad name {name!r}")
    return list(value.items())


def required_value(fields: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in fields:
        raise Unbuildable(join(path, key), f"missing required key '{key}'")
    return fields[key]


def as_list(value: Any, path: str, *, nonempty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise Unbuildable(path, f"expected a list, got {describe(value)}")
    if nonempty and not value:
        raise Unbuildable(path, "must not be empty")
    return value


def all_strings(value: Any) -> bool:
    """A non-empty list of strings (then a tuple of it is a usable dictionary key)."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def as_text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise Unbuildable(path, f"expected a string, got {describe(value)}")
    return value


def as_refs(value: Any, path: str, ref: RefReader, *, required: bool) -> tuple[PrincipalRef, ...]:
    if value is None and not required:
        return ()
    items = as_list(value, path, nonempty=required)
    return tuple(ref(item, f"{path}[{i}]") for i, item in enumerate(items))


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise Unbuildable(path, f"expected true or false, got {describe(value)}")
    return value


def _flag_of(fields: Mapping[str, Any], key: str, path: str) -> bool:
    return _flag(fields[key], join(path, key)) if key in fields else False


def as_integer(value: Any, path: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unbuildable(path, f"expected an integer, got {describe(value)}")
    if value < minimum:
        raise Unbuildable(path, f"must be at least {minimum}, got {value}")
    return value


def _positive_of(fields: Mapping[str, Any], key: str, path: str) -> int | None:
    return as_integer(fields[key], join(path, key), 1) if key in fields else None


def _duration(value: Any, path: str) -> timedelta:
    try:
        return parse_duration(as_text(value, path))
    except (ValueError, OverflowError) as exc:
        raise Unbuildable(path, f"bad duration: {exc}") from None


def _duration_of(fields: Mapping[str, Any], key: str, path: str) -> timedelta | None:
    return _duration(fields[key], join(path, key)) if key in fields else None


def _choice(fields: Mapping[str, Any], key: str, path: str, enum: Any) -> Any:
    if key not in fields:
        return None
    text = as_text(fields[key], join(path, key))
    try:
        return enum(text)
    except ValueError:
        raise Unbuildable(join(path, key), f"unknown value {text!r}") from None


def _ticket(value: Any, path: str) -> str:
    pattern = as_text(value, path)
    if not pattern:
        raise Unbuildable(path, "must not be empty")
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise Unbuildable(path, f"not a valid regular expression: {exc}") from None
    return pattern


def _plain(value: Any, path: str, *, in_list: bool = False) -> Any:
    """A grants/options value: string, integer, boolean, null, or a list of those (a tuple)."""
    if isinstance(value, list) and not in_list:
        return tuple(_plain(item, f"{path}[{i}]", in_list=True) for i, item in enumerate(value))
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    raise Unbuildable(path, f"expected a string, integer, bool or null, got {describe(value)}")


def _plain_mapping(value: Any, path: str) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise Unbuildable(path, f"expected a mapping, got {describe(value)}")
    return tuple(sorted((key, _plain(item, join(path, key))) for key, item in value.items()))
