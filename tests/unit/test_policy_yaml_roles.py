"""The policy loader on roles: durations, requirements, grants, approval stages, eligibility."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from jitaccess.adapters.policy_yaml import load_policy_files, load_policy_text
from jitaccess.domain.policy import OnExtend
from unit.test_policy_yaml import PEOPLE, one_problem, problems, role


# --- roles --------------------------------------------------------------------------------
def test_role_on_missing_target_is_refused() -> None:
    text = PEOPLE + "roles:\n  r:\n    target: nowhere\n"
    assert one_problem(text) == (9, "roles.r.target", "role on a missing target 'nowhere'")


def test_role_without_target_is_refused() -> None:
    text = PEOPLE + "roles:\n  r: {description: x}\n"
    assert one_problem(text) == (8, "roles.r.target", "missing required key 'target'")


def test_invalid_role_name_is_refused() -> None:
    assert one_problem(PEOPLE + "roles:\n  /r: {target: demo}\n")[:2] == (8, "roles./r")


def test_bad_duration_names_the_key() -> None:
    line, key, reason = one_problem(role("    duration:\n      default: 1h\n      max: 4 hours\n"))
    assert (line, key) == (12, "roles.r.duration.max")
    assert reason.startswith("bad duration '4 hours': ")


def test_iso_durations_are_accepted() -> None:
    policy = load_policy_text(role("    duration: {default: PT1H, max: P1DT2H, min: PT5M}\n"))
    duration = policy.roles["r"].duration
    assert (duration.default, duration.max, duration.min) == (
        timedelta(hours=1),
        timedelta(days=1, hours=2),
        timedelta(minutes=5),
    )


def test_default_longer_than_max_is_refused() -> None:
    text = role("    duration: {default: 8h, max: 4h}\n")
    assert one_problem(text) == (10, "roles.r.duration.default", "must not exceed max")


def test_min_longer_than_default_is_refused() -> None:
    text = role("    duration: {default: 1h, max: 4h, min: 2h}\n")
    assert one_problem(text) == (10, "roles.r.duration.min", "must not exceed default")


def test_duration_without_max_is_refused() -> None:
    text = role("    duration: {default: 1h}\n")
    assert one_problem(text) == (10, "roles.r.duration.max", "missing required key 'max'")


def test_omitted_duration_defaults_to_one_hour_up_to_eight() -> None:
    duration = load_policy_text(role("")).roles["r"].duration
    assert (duration.default, duration.max) == (timedelta(hours=1), timedelta(hours=8))


def test_uncompilable_ticket_regex_is_refused() -> None:
    line, key, reason = one_problem(role("    require: {ticket: '^INC-[0-9+$'}\n"))
    assert (line, key) == (10, "roles.r.require.ticket")
    assert reason.startswith("not a valid regular expression: unterminated character set")


def test_requirements_are_read() -> None:
    text = role(
        "    require: {justification: true, justification_min_length: 20, mfa: true,"
        " ticket: '^T-[0-9]+$'}\n"
    )
    require = load_policy_text(text).roles["r"].require
    assert require.justification and require.mfa
    assert require.justification_min_length == 20
    assert require.ticket == "^T-[0-9]+$"


def test_yes_is_not_a_boolean() -> None:
    text = role("    require: {justification: yes}\n")
    assert one_problem(text) == (
        10,
        "roles.r.require.justification",
        "write true or false, not 'yes'",
    )


def test_quoted_true_is_not_a_boolean() -> None:
    text = role("    require: {mfa: 'true'}\n")
    assert one_problem(text) == (
        10,
        "roles.r.require.mfa",
        "expected true or false, got a string",
    )


def test_negative_justification_min_length_is_refused() -> None:
    text = role("    require: {justification_min_length: -1}\n")
    assert one_problem(text) == (
        10,
        "roles.r.require.justification_min_length",
        "must be at least 0, got -1",
    )


def test_postgres_role_needs_postgres_roles() -> None:
    text = PEOPLE + "  db: {type: postgres, connection: {env: DB}}\nroles:\n  r: {target: db}\n"
    line, key, reason = one_problem(text)
    assert (line, key) == (9, "roles.r.grants")
    assert "postgres_roles" in reason


def test_postgres_grants_refuse_other_keys_and_bad_identifiers() -> None:
    text = (
        PEOPLE
        + "  db: {type: postgres, connection: {env: DB}}\nroles:\n  r:\n    target: db\n"
        + "    grants:\n      postgres_roles: [readonly, 'drop table']\n      ssh_principals: [x]\n"
    )
    assert [(line, key) for line, key, _ in problems(text)] == [
        (12, "roles.r.grants.postgres_roles[1]"),
        (13, "roles.r.grants.ssh_principals"),
    ]


def test_postgres_grants_may_come_before_the_target_file(tmp_path: Path) -> None:
    roles_file = tmp_path / "roles.yaml"
    roles_file.write_text("roles:\n  r: {target: db, grants: {postgres_roles: [ro]}}\n")
    targets_file = tmp_path / "targets.yaml"
    targets_file.write_text(PEOPLE + "  db: {type: postgres, connection: {env: DB}}\n")
    policy, _ = load_policy_files([roles_file, targets_file])
    assert policy.roles["r"].grants == (("postgres_roles", ("ro",)),)


def test_other_target_types_accept_any_grants_mapping() -> None:
    text = role("    grants: {redis_acl: '~cache:* +@read', keys: [a, b], ttl: 3}\n")
    grants = load_policy_text(text).roles["r"].grants
    assert grants == (("keys", ("a", "b")), ("redis_acl", "~cache:* +@read"), ("ttl", 3))


# --- approval -----------------------------------------------------------------------------
def stage(lines: str) -> str:
    """A role with one approval stage whose keys start on line 12."""
    return role("    approval:\n      stages:\n" + lines)


def test_approval_defaults_are_filled_in() -> None:
    approval = (
        load_policy_text(stage("        - {name: s, approvers: [user:bob]}\n")).roles["r"].approval
    )
    assert approval is not None
    assert approval.pending_ttl == timedelta(hours=24)
    assert approval.on_extend is OnExtend.REQUIRED
    first = approval.stages[0]
    assert (first.min_approvals, first.all_groups, first.deny_threshold) == (1, False, 1)
    assert first.escalate_after is None and first.escalate_to == ()


def test_approval_needs_at_least_one_stage() -> None:
    text = role("    approval:\n      stages: []\n")
    assert one_problem(text) == (11, "roles.r.approval.stages", "must list at least one stage")


def test_stage_without_approvers_is_refused() -> None:
    text = stage("        - {name: s, approvers: []}\n")
    assert one_problem(text) == (
        12,
        "roles.r.approval.stages[0].approvers",
        "must list at least one principal",
    )


def test_stage_names_must_be_unique() -> None:
    text = stage(
        "        - {name: s, approvers: [user:bob]}\n        - {name: s, approvers: [user:carol]}\n"
    )
    assert one_problem(text) == (
        13,
        "roles.r.approval.stages[1].name",
        "stage 's' is named twice",
    )


def test_escalate_after_needs_escalate_to() -> None:
    text = stage(
        "        - name: s\n          approvers: [user:bob]\n          escalate_after: 1h\n"
    )
    assert one_problem(text) == (
        14,
        "roles.r.approval.stages[0].escalate_to",
        "escalate_after needs escalate_to too",
    )


def test_escalate_to_needs_escalate_after() -> None:
    text = stage("        - {name: s, approvers: [user:bob], escalate_to: [user:carol]}\n")
    assert one_problem(text)[1:] == (
        "roles.r.approval.stages[0].escalate_after",
        "escalate_to needs escalate_after too",
    )


def test_stage_that_can_never_be_satisfied_is_refused() -> None:
    text = stage(
        "        - name: s\n"
        "          approvers: [group:dba, user:bob]\n"
        "          min_approvals: 3\n"
    )
    assert one_problem(text) == (
        14,
        "roles.r.approval.stages[0].min_approvals",
        "min_approvals 3 can never be satisfied: only 2 people can approve stage 's'",
    )


def test_escalation_approvers_count_towards_what_a_stage_can_reach() -> None:
    text = stage(
        "        - {name: s, approvers: [group:dba], min_approvals: 3,"
        " escalate_after: 30m, escalate_to: [user:alice]}\n"
    )
    load_policy_text(text)


def test_min_approvals_must_be_a_real_integer() -> None:
    text = stage("        - {name: s, approvers: [user:bob], min_approvals: true}\n")
    assert one_problem(text) == (
        12,
        "roles.r.approval.stages[0].min_approvals",
        "expected an integer, got a boolean",
    )


def test_min_approvals_must_be_at_least_one() -> None:
    text = stage("        - {name: s, approvers: [user:bob], min_approvals: 0}\n")
    assert one_problem(text)[2] == "must be at least 1, got 0"


def test_on_extend_must_be_required_or_not_required() -> None:
    text = role(
        "    approval:\n      on_extend: maybe\n      stages: [{name: s, approvers: [user:bob]}]\n"
    )
    assert one_problem(text) == (
        11,
        "roles.r.approval.on_extend",
        "must be required or not_required, not 'maybe'",
    )


# --- eligibility --------------------------------------------------------------------------
def eligible(row: str) -> str:
    """PEOPLE, a role `r`, and one eligibility row on line 11."""
    return role("eligibility:\n" + row)


def test_eligibility_naming_unknown_principal_is_refused() -> None:
    text = eligible("  - {principals: [user:alice, user:zed], roles: [r]}\n")
    assert one_problem(text) == (
        11,
        "eligibility[0].principals[1]",
        "unknown principal 'user:zed'",
    )


def test_eligibility_naming_unknown_role_is_refused() -> None:
    text = eligible("  - {principals: [group:engineers], roles: [r, q]}\n")
    assert one_problem(text) == (11, "eligibility[0].roles[1]", "unknown role 'q'")


def test_eligibility_needs_principals_and_roles() -> None:
    found = problems(eligible("  - {principals: [], roles: []}\n"))
    assert [key for _, key, _ in found] == ["eligibility[0].principals", "eligibility[0].roles"]


def test_eligibility_dates_may_be_plain_or_quoted() -> None:
    text = eligible(
        "  - {principals: [user:bob], roles: [r], from: '2026-01-01', until: 2027-06-30}\n"
    )
    row = load_policy_text(text).eligibility[0]
    assert (row.valid_from, row.valid_until) == (date(2026, 1, 1), date(2027, 6, 30))


def test_eligibility_until_before_from_is_refused() -> None:
    text = eligible(
        "  - {principals: [user:bob], roles: [r], from: 2027-01-01, until: 2026-01-01}\n"
    )
    assert one_problem(text) == (
        11,
        "eligibility[0].until",
        "until 2026-01-01 is before from 2027-01-01",
    )


def test_eligibility_date_must_be_a_date() -> None:
    text = eligible("  - {principals: [user:bob], roles: [r], until: next year}\n")
    assert one_problem(text)[1:] == (
        "eligibility[0].until",
        "expected a date like 2027-06-30, got a string",
    )
