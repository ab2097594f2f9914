"""A policy as its canonical document (plain JSON data in the YAML shape), both ways.

`policy_to_document` writes what a version stores and `policy_digest` hashes; loading the
document again gives an equal Policy, through YAML (`load_policy_text`) or straight from the
data (`policy_from_document`, which a stored version is loaded with: no YAML, a row at a time).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from jitaccess.adapters.policy_document_reader import DocumentReader, policy_from_document
from jitaccess.domain.durations import format_duration
from jitaccess.domain.policy import (
    DAY_NAMES,
    AllowedHours,
    ApprovalPolicy,
    AutoApproveRule,
    BreakGlassPolicy,
    DriftAction,
    Policy,
    Role,
    Stage,
    Target,
    User,
)

__all__ = ["DocumentReader", "policy_digest", "policy_from_document", "policy_to_document"]


def policy_to_document(policy: Policy) -> dict[str, Any]:
    """The policy as plain JSON data in the YAML shape; loading it gives an equal Policy."""
    doc = {
        "version": 1,
        "admins": [str(ref) for ref in policy.admins],
        "auditors": [str(ref) for ref in policy.auditors],
        "users": {name: _user(user) for name, user in policy.users.items()},
        "targets": {name: _target(target) for name, target in policy.targets.items()},
        "roles": {name: _role(role) for name, role in policy.roles.items()},
        "eligibility": [
            _optional(
                {
                    "principals": [str(ref) for ref in row.principals],
                    "roles": list(row.roles),
                    "from": row.valid_from.isoformat() if row.valid_from else None,
                    "until": row.valid_until.isoformat() if row.valid_until else None,
                }
            )
            for row in policy.eligibility
        ],
    }
    if policy.schedules:
        doc["schedules"] = {name: {"file": s.file} for name, s in policy.schedules.items()}
    if policy.break_glass != BreakGlassPolicy():
        doc["break_glass"] = {
            "max_duration": format_duration(policy.break_glass.max_duration),
            "justification_min_length": policy.break_glass.justification_min_length,
        }
    result: dict[str, Any] = _sorted(doc)
    return result


def policy_digest(policy: Policy) -> str:
    """sha256 of the canonical JSON: equal policies have equal digests, whatever the YAML."""
    text = json.dumps(policy_to_document(policy), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _user(user: User) -> dict[str, Any]:
    return _optional(
        {
            "kind": user.kind.value,
            "email": user.email,
            "groups": list(user.groups),
            "break_glass": True if user.break_glass else None,
        }
    )


def _target(target: Target) -> dict[str, Any]:
    connection = None
    if target.connection is not None:
        connection = _optional({"env": target.connection.env, "file": target.connection.file})
    return _optional(
        {
            "type": target.type,
            "connection": connection,
            "options": _pairs(target.options),
            "drift": target.drift.value if target.drift != DriftAction.REPORT else None,
        }
    )


def _role(role: Role) -> dict[str, Any]:
    req = role.require
    return _optional(
        {
            "target": role.target,
            "description": role.description,
            "grants": _pairs(role.grants),
            "duration": {
                "default": format_duration(role.duration.default),
                "max": format_duration(role.duration.max),
                "min": format_duration(role.duration.min),
            },
            "require": _optional(
                {
                    "justification": req.justification,
                    "justification_min_length": req.justification_min_length,
                    "ticket": req.ticket,
                    "mfa": req.mfa,
                    "allowed_hours": _hours(req.allowed_hours) if req.allowed_hours else None,
                }
            ),
            "approval": _approval(role.approval) if role.approval else None,
            "max_active": role.max_active,
            "break_glass": True if role.break_glass else None,
        }
    )


def _hours(hours: AllowedHours) -> dict[str, Any]:
    return {
        "days": ",".join(DAY_NAMES[d] for d in sorted(hours.days)),
        "from": f"{hours.start:%H:%M}",
        "to": f"{hours.end:%H:%M}",
        "tz": hours.tz,
    }


def _approval(approval: ApprovalPolicy) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pending_ttl": format_duration(approval.pending_ttl),
        "on_extend": approval.on_extend.value,
        "stages": [_stage(stage) for stage in approval.stages],
    }
    if not approval.distinct_stage_approvers:
        doc["distinct_stage_approvers"] = False
    if approval.auto_approve:
        doc["auto_approve"] = [_rule(rule) for rule in approval.auto_approve]
    return doc


def _rule(rule: AutoApproveRule) -> dict[str, Any]:
    return _optional(
        {
            "name": rule.name,
            "on_call": rule.on_call,
            "groups": list(rule.groups) if rule.groups else None,
            "max_duration": format_duration(rule.max_duration) if rule.max_duration else None,
            "ticket": rule.ticket,
        }
    )


def _stage(stage: Stage) -> dict[str, Any]:
    after = stage.escalate_after
    return _optional(
        {
            "name": stage.name,
            "approvers": [str(ref) for ref in stage.approvers],
            "min_approvals": stage.min_approvals,
            "all_groups": stage.all_groups,
            "deny_threshold": stage.deny_threshold,
            "escalate_after": format_duration(after) if after is not None else None,
            # the loader only accepts escalate_to together with escalate_after
            "escalate_to": [str(ref) for ref in stage.escalate_to] if after is not None else None,
            "mfa": True if stage.mfa else None,
        }
    )


def _pairs(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in pairs}


def _optional(fields: dict[str, Any]) -> dict[str, Any]:
    # None means "not set": the key is left out, exactly as a person would write it.
    return {key: value for key, value in fields.items() if value is not None}


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value
