"""A large policy, generated as the stored JSON document (the canonical shape
`policy_to_document` writes), without going through YAML: `users` users in group `engineers`,
`roles` roles on a fake target, and one eligibility row per (user, role): users x roles rows.

Plus a user `sentinel` (group `sentinel`, eligible for the first role through one group row)
that the benchmarks use to make requests, and an admin `security-admin`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from jitaccess.adapters.db.policy_repository import SqlPolicies
from jitaccess.adapters.db.tables import policy_versions
from jitaccess.adapters.policy_yaml import load_policy_text, policy_to_document
from jitaccess.domain.policy import Policy
from jitaccess.ports import PolicyVersion

SENTINEL = "sentinel"


def role_name(r: int) -> str:
    return f"bench/r{r}"


def user_name(i: int) -> str:
    return f"u{i:06d}"


def _frame(roles: int) -> dict[str, Any]:
    """Targets, roles and the two fixed users, through the product's own loader and writer."""
    text = (
        "admins: [group:security]\n"
        "users:\n  security-admin: {groups: [security]}\n"
        f"  {SENTINEL}: {{groups: [sentinel]}}\n"
        "targets:\n  bench: {type: fake}\n"
        "roles:\n"
        + "".join(
            f"  {role_name(r)}:\n    target: bench\n    grants: {{scope: read}}\n"
            "    duration: {default: 1h, min: 1s, max: 8h}\n"
            for r in range(roles)
        )
        + f"eligibility:\n  - principals: [group:sentinel]\n    roles: [{role_name(0)}]\n"
    )
    return policy_to_document(load_policy_text(text, "frame.yaml"))


def generate(users: int, roles: int) -> dict[str, Any]:
    doc = _frame(roles)
    people = dict(doc["users"])
    for i in range(users):
        people[user_name(i)] = {"groups": ["engineers"], "kind": "user"}
    doc["users"] = {name: people[name] for name in sorted(people)}
    doc["eligibility"] = doc["eligibility"] + [
        {"principals": [f"user:{user_name(i)}"], "roles": [role_name(r)]}
        for i in range(users)
        for r in range(roles)
    ]
    return doc


def digest(document: dict[str, Any]) -> str:
    """As `policy_digest` computes it from the canonical document."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def store(engine: Engine, document: dict[str, Any], applied_by: str = "bench") -> int:
    """Store `document` as the next policy version, as `apply_policy` would; returns it."""
    with engine.begin() as conn:
        # Not `current()`: that would parse the version in force in this process.
        latest = conn.execute(select(func.max(policy_versions.c.version))).scalar()
        version = int(latest or 0) + 1
        SqlPolicies(conn).add(
            PolicyVersion(
                version=version,
                policy=Policy(),  # not stored: only the document is
                document=document,
                digest=digest(document),
                applied_at=datetime.now(UTC),
                applied_by=applied_by,
            )
        )
    return version
