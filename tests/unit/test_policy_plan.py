"""The plan: what applying a new policy would add, change and remove."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

from jitaccess.domain.policy import (
    ApprovalPolicy,
    ConnectionRef,
    DurationPolicy,
    Eligibility,
    Policy,
    PrincipalKind,
    PrincipalRef,
    Requirements,
    Role,
    Stage,
    Target,
    User,
)
from jitaccess.domain.policy_plan import PolicyChange, describe_eligibility, plan_policy

ENGINEERS = PrincipalRef("group", "engineers")
ROW = Eligibility((ENGINEERS,), ("prod-db/readonly",), valid_until=date(2027, 6, 30))
ROLE = Role(
    name="prod-db/readonly",
    target="prod-db",
    grants=(("postgres_roles", ("readonly",)),),
    duration=DurationPolicy(default=timedelta(hours=1), max=timedelta(hours=4)),
    require=Requirements(justification=True),
    approval=ApprovalPolicy(stages=(Stage("dba", (PrincipalRef("group", "dba"),)),)),
)
BASE = Policy(
    users={
        "alice": User("alice", email="alice@example.com", groups=("engineers",)),
        "bob": User("bob", groups=("dba",)),
    },
    targets={"prod-db": Target("prod-db", "postgres", ConnectionRef(env="PROD_DB_ADMIN_URL"))},
    roles={ROLE.name: ROLE},
    eligibility=(ROW,),
    admins=(PrincipalRef("group", "dba"),),
    auditors=(PrincipalRef("user", "alice"),),
)


def with_role(**changes: object) -> Policy:
    return replace(BASE, roles={ROLE.name: replace(ROLE, **changes)})  # type: ignore[arg-type]


def test_identical_policies_plan_nothing() -> None:
    assert plan_policy(BASE, replace(BASE)) == []


def test_first_apply_adds_everything() -> None:
    plan = plan_policy(None, BASE)
    assert {c.action for c in plan} == {"add"}
    assert [(c.kind, c.name) for c in plan] == [
        ("user", "alice"),
        ("user", "bob"),
        ("target", "prod-db"),
        ("role", "prod-db/readonly"),
        ("eligibility", "group:engineers -> prod-db/readonly until 2027-06-30"),
        ("admins", "group:dba"),
        ("auditors", "user:alice"),
    ]


def test_user_add_change_remove() -> None:
    new = replace(
        BASE,
        users={
            "alice": User("alice", PrincipalKind.USER, "a@example.org", ("engineers", "oncall")),
            "carol": User("carol"),
        },
    )
    assert plan_policy(BASE, new) == [
        PolicyChange(
            "change",
            "user",
            "alice",
            (
                "email: alice@example.com -> a@example.org",
                "groups: [engineers] -> [engineers, oncall]",
            ),
        ),
        PolicyChange("remove", "user", "bob"),
        PolicyChange("add", "user", "carol"),
    ]


def test_target_add_change_remove() -> None:
    changed = Target("prod-db", "postgres", ConnectionRef(file="/run/db"), (("port", 5433),))
    new = replace(BASE, targets={"prod-db": changed, "demo": Target("demo", "fake")})
    assert plan_policy(BASE, new) == [
        PolicyChange("add", "target", "demo"),
        PolicyChange(
            "change",
            "target",
            "prod-db",
            ("connection: env:PROD_DB_ADMIN_URL -> file:/run/db", "options.port: (none) -> 5433"),
        ),
    ]
    assert plan_policy(new, BASE)[0] == PolicyChange("remove", "target", "demo")


def test_role_duration_change_is_described() -> None:
    longer = DurationPolicy(default=timedelta(hours=1), max=timedelta(hours=8))
    [change] = plan_policy(BASE, with_role(duration=longer))
    assert change == PolicyChange("change", "role", ROLE.name, ("duration.max: 4h -> 8h",))


def test_role_requirement_and_grant_changes_are_described() -> None:
    [change] = plan_policy(
        BASE,
        with_role(
            require=Requirements(justification=True, ticket="^INC-[0-9]+$", mfa=True),
            grants=(("postgres_roles", ("readonly", "reporting")),),
        ),
    )
    assert change.details == (
        "grants.postgres_roles: [readonly] -> [readonly, reporting]",
        "require.ticket: (none) -> ^INC-[0-9]+$",
        "require.mfa: false -> true",
    )


def test_role_approval_changes_are_described_per_stage() -> None:
    stages = (
        Stage("dba", (PrincipalRef("group", "dba"),), min_approvals=2),
        Stage("security", (PrincipalRef("user", "alice"),)),
    )
    [change] = plan_policy(BASE, with_role(approval=ApprovalPolicy(stages=stages)))
    assert change.details == (
        "approval: 1 stage -> 2 stages",
        "approval.stages: [dba] -> [dba, security]",
        "approval.stages[dba].min_approvals: 1 -> 2",
        "approval.stages[security].approvers: (none) -> [user:alice]",
        "approval.stages[security].min_approvals: (none) -> 1",
        "approval.stages[security].all_groups: (none) -> false",
        "approval.stages[security].deny_threshold: (none) -> 1",
        "approval.stages[security].escalate_to: (none) -> []",
    )


def test_dropping_approval_is_described() -> None:
    [change] = plan_policy(BASE, with_role(approval=None))
    assert change.details[0] == "approval: 1 stage -> (none)"


def test_role_add_and_remove() -> None:
    other = replace(ROLE, name="prod-db/admin")
    plan = plan_policy(BASE, replace(BASE, roles={other.name: other}))
    assert plan == [
        PolicyChange("add", "role", "prod-db/admin"),
        PolicyChange("remove", "role", "prod-db/readonly"),
    ]


def test_eligibility_rows_compare_as_a_set() -> None:
    later = replace(ROW, valid_until=date(2028, 1, 1))
    assert plan_policy(BASE, replace(BASE, eligibility=(ROW, ROW))) == []
    assert plan_policy(BASE, replace(BASE, eligibility=(later,))) == [
        PolicyChange(
            "remove", "eligibility", "group:engineers -> prod-db/readonly until 2027-06-30"
        ),
        PolicyChange("add", "eligibility", "group:engineers -> prod-db/readonly until 2028-01-01"),
    ]


def test_eligibility_rendering_names_everything() -> None:
    row = Eligibility(
        (ENGINEERS, PrincipalRef("user", "bob")),
        ("a", "b"),
        valid_from=date(2026, 1, 1),
        valid_until=date(2026, 12, 31),
    )
    assert (
        describe_eligibility(row)
        == "group:engineers, user:bob -> a, b from 2026-01-01 until 2026-12-31"
    )


def test_admins_and_auditors_add_and_remove() -> None:
    new = replace(
        BASE,
        admins=(PrincipalRef("group", "security"),),
        auditors=(PrincipalRef("user", "alice"), PrincipalRef("user", "erin")),
    )
    assert plan_policy(BASE, new) == [
        PolicyChange("remove", "admins", "group:dba"),
        PolicyChange("add", "admins", "group:security"),
        PolicyChange("add", "auditors", "user:erin"),
    ]


def test_change_renders_as_text() -> None:
    change = PolicyChange("change", "role", "r", ("duration.max: 4h -> 8h",))
    assert str(change) == "~ role r\n    duration.max: 4h -> 8h"
