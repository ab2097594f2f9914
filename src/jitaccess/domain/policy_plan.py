"""What applying a new policy would change: users, targets, roles, eligibility, admins, auditors.

`jitaccess policy plan` prints these; `policy apply` records them in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from jitaccess.domain.durations import format_duration
from jitaccess.domain.policy import Eligibility, Policy, Role, Stage, Target, User

T = TypeVar("T")
Action = Literal["add", "change", "remove"]
Kind = Literal["user", "target", "role", "eligibility", "admins", "auditors"]

_KIND_ORDER: tuple[Kind, ...] = ("user", "target", "role", "eligibility", "admins", "auditors")
_ACTION_ORDER: dict[str, int] = {"remove": 0, "change": 1, "add": 2}
_UNSET = "(none)"


@dataclass(frozen=True)
class PolicyChange:
    """One line of a plan; `details` says, field by field, what a change does (old -> new)."""

    action: Action
    kind: Kind
    name: str
    details: tuple[str, ...] = ()

    def __str__(self) -> str:
        sign = {"add": "+", "change": "~", "remove": "-"}[self.action]
        head = f"{sign} {self.kind} {self.name}"
        return "\n".join([head, *(f"    {line}" for line in self.details)])


def plan_policy(old: Policy | None, new: Policy) -> list[PolicyChange]:
    """Every difference from `old` (None: nothing applied yet) to `new`, in a stable order."""
    before = old if old is not None else Policy()
    changes: list[PolicyChange] = []
    changes += _named("user", before.users, new.users, _user_fields)
    changes += _named("target", before.targets, new.targets, _target_fields)
    changes += _named("role", before.roles, new.roles, _role_fields)
    changes += _members("eligibility", before.eligibility, new.eligibility, describe_eligibility)
    changes += _members("admins", before.admins, new.admins, str)
    changes += _members("auditors", before.auditors, new.auditors, str)
    return sorted(
        changes, key=lambda c: (_KIND_ORDER.index(c.kind), c.name, _ACTION_ORDER[c.action])
    )


def describe_eligibility(row: Eligibility) -> str:
    """`group:engineers -> prod-db/readonly until 2027-06-30`"""
    text = ", ".join(str(ref) for ref in row.principals) + " -> " + ", ".join(row.roles)
    if row.valid_from:
        text += f" from {row.valid_from.isoformat()}"
    if row.valid_until:
        text += f" until {row.valid_until.isoformat()}"
    return text


def _named(
    kind: Kind,
    old: Mapping[str, T],
    new: Mapping[str, T],
    fields: Callable[[T], dict[str, str]],
) -> list[PolicyChange]:
    out = [PolicyChange("remove", kind, name) for name in old if name not in new]
    out += [PolicyChange("add", kind, name) for name in new if name not in old]
    for name in old.keys() & new.keys():
        details = _diff(fields(old[name]), fields(new[name]))
        if details:
            out.append(PolicyChange("change", kind, name, details))
    return out


def _members(
    kind: Kind, old: Iterable[T], new: Iterable[T], render: Callable[[T], str]
) -> list[PolicyChange]:
    # Rows and principal lists are sets: order and repeats in the file do not change access.
    before = {render(item) for item in old}
    after = {render(item) for item in new}
    out = [PolicyChange("remove", kind, name) for name in before - after]
    return out + [PolicyChange("add", kind, name) for name in after - before]


def _diff(old: dict[str, str], new: dict[str, str]) -> tuple[str, ...]:
    keys = list(old) + [key for key in new if key not in old]
    return tuple(
        f"{key}: {old.get(key, _UNSET)} -> {new.get(key, _UNSET)}"
        for key in keys
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _user_fields(user: User) -> dict[str, str]:
    return {
        "kind": user.kind.value,
        "email": user.email or _UNSET,
        "groups": _show(user.groups),
    }


def _target_fields(target: Target) -> dict[str, str]:
    fields = {
        "type": target.type,
        "connection": target.connection.describe() if target.connection else _UNSET,
    }
    fields.update({f"options.{key}": _show(value) for key, value in target.options})
    return fields


def _role_fields(role: Role) -> dict[str, str]:
    req = role.require
    fields = {
        "target": role.target,
        "description": role.description or _UNSET,
        **{f"grants.{key}": _show(value) for key, value in role.grants},
        "duration.default": format_duration(role.duration.default),
        "duration.max": format_duration(role.duration.max),
        "duration.min": format_duration(role.duration.min),
        "require.justification": _show(req.justification),
        "require.justification_min_length": str(req.justification_min_length),
        "require.ticket": req.ticket or _UNSET,
        "require.mfa": _show(req.mfa),
    }
    approval = role.approval
    if approval is None:
        fields["approval"] = _UNSET
        return fields
    count = len(approval.stages)
    fields["approval"] = f"{count} stage{'' if count == 1 else 's'}"
    fields["approval.pending_ttl"] = format_duration(approval.pending_ttl)
    fields["approval.on_extend"] = approval.on_extend.value
    # Stage order matters (they run one after the other), so it is a field of its own.
    fields["approval.stages"] = _show(tuple(stage.name for stage in approval.stages))
    for stage in approval.stages:
        fields.update(_stage_fields(stage))
    return fields


def _stage_fields(stage: Stage) -> dict[str, str]:
    prefix = f"approval.stages[{stage.name}]"
    after = stage.escalate_after
    return {
        f"{prefix}.approvers": _show(tuple(str(ref) for ref in stage.approvers)),
        f"{prefix}.min_approvals": str(stage.min_approvals),
        f"{prefix}.all_groups": _show(stage.all_groups),
        f"{prefix}.deny_threshold": str(stage.deny_threshold),
        f"{prefix}.escalate_after": format_duration(after) if after else _UNSET,
        f"{prefix}.escalate_to": _show(tuple(str(ref) for ref in stage.escalate_to)),
    }
