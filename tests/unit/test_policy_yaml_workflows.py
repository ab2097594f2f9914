"""The policy loader on approval workflows: auto-approval, schedules, break-glass, allowed
hours, max_active, stage MFA and distinct stage approvers — each bad value named by line and key."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from jitaccess.adapters.policy_yaml import load_policy_files, load_policy_text, policy_to_document
from jitaccess.domain.policy import AllowedHours, AutoApproveRule, BreakGlassPolicy
from unit.test_policy_yaml import EXAMPLE, PEOPLE, one_problem, problems, role

STAGES = """\
    approval:
      stages:
        - name: dba
          approvers: [group:dba]
"""


def test_example_has_every_workflow_key_and_survives_a_round_trip() -> None:
    policy, _ = load_policy_files([EXAMPLE])
    owner = policy.roles["prod-db/owner"]
    assert owner.max_active == 1
    assert owner.require.mfa
    assert owner.require.allowed_hours == AllowedHours(
        frozenset({0, 1, 2, 3, 4}), time(8), time(18), "Europe/Berlin"
    )
    assert owner.approval is not None
    assert owner.approval.stages[1].mfa and owner.approval.stages[1].all_groups
    readonly = policy.roles["prod-db/readonly"].approval
    assert readonly is not None
    assert readonly.auto_approve[0] == AutoApproveRule(
        "on-call-short", on_call="primary", max_duration=timedelta(hours=1)
    )
    assert policy.roles["prod-db/emergency"].break_glass
    assert policy.users["frank"].break_glass
    assert policy.schedules["primary"].file == str(EXAMPLE.parent / "oncall.yaml")
    assert policy.break_glass == BreakGlassPolicy(timedelta(hours=1), 20)
    assert load_policy_text(json.dumps(policy_to_document(policy))) == policy


def test_auto_approve_rule_needs_a_condition() -> None:
    text = role(STAGES + "      auto_approve:\n        - {name: always}\n")
    assert one_problem(text) == (
        15,
        "roles.r.approval.auto_approve[0]",
        "a rule needs at least one of on_call, groups, max_duration, ticket",
    )


def test_auto_approve_rule_names_are_unique_and_unnamed_rules_are_named_by_conditions() -> None:
    text = role(
        STAGES
        + "      auto_approve:\n        - {groups: [dba], max_duration: 15m}\n"
        + "        - {name: groups+max_duration, ticket: '^X'}\n"
    )
    assert one_problem(text)[1:] == (
        "roles.r.approval.auto_approve[1].name",
        "rule 'groups+max_duration' is named twice",
    )


def test_auto_approve_refers_to_known_groups_and_schedules() -> None:
    text = role(
        STAGES + "      auto_approve:\n        - {groups: [nobody-has-it], on_call: pager}\n"
    )
    assert problems(text) == [
        (
            15,
            "roles.r.approval.auto_approve[0].groups[0]",
            "unknown group 'nobody-has-it' (no user has it)",
        ),
        (15, "roles.r.approval.auto_approve[0].on_call", "unknown schedule 'pager'"),
    ]


def test_auto_approve_ticket_must_be_a_regex() -> None:
    text = role(STAGES + "      auto_approve:\n        - {ticket: '(['}\n")
    line, key, reason = one_problem(text)
    assert (line, key) == (15, "roles.r.approval.auto_approve[0].ticket")
    assert reason.startswith("not a valid regular expression")


def test_unknown_key_in_a_rule_is_refused() -> None:
    text = role(STAGES + "      auto_approve:\n        - {groups: [dba], when: always}\n")
    assert one_problem(text)[1] == "roles.r.approval.auto_approve[0].when"


def test_schedule_file_must_exist_when_validated(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(PEOPLE + "schedules:\n  pager: {file: missing.yaml}\n")
    found = problems_of_files([policy])
    assert len(found) == 1
    assert found[0][:2] == (8, "schedules.pager.file")
    assert "missing.yaml" in found[0][2]


def test_schedule_path_is_read_next_to_the_policy_file(tmp_path: Path) -> None:
    (tmp_path / "rota.yaml").write_text(
        "shifts:\n  - {who: alice, from: 2026-01-01T00:00, to: 2026-01-02T00:00}\n"
    )
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(PEOPLE + "schedules:\n  pager: {file: rota.yaml}\n")
    policy, _ = load_policy_files([policy_file])
    assert policy.schedules["pager"].file == str(tmp_path / "rota.yaml")


def test_a_broken_schedule_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "rota.yaml").write_text("shifts: [{who: alice}]\n")
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(PEOPLE + "schedules:\n  pager: {file: rota.yaml}\n")
    ((line, key, reason),) = problems_of_files([policy_file])
    assert (line, key) == (8, "schedules.pager.file")
    assert "from" in reason


def test_allowed_hours_are_checked_key_by_key() -> None:
    text = role(
        "    require:\n      allowed_hours:\n"
        "        {days: mon-fry, from: '8:00', to: '25:00', tz: Mars/Base}\n"
    )
    assert [(key, reason.split(" (use")[0]) for _, key, reason in problems(text)] == [
        ("roles.r.require.allowed_hours.days", "'mon-fry' is not a day or range like mon-fri"),
        (
            "roles.r.require.allowed_hours.from",
            "expected a time like \"08:00\" (quoted), not '8:00'",
        ),
        (
            "roles.r.require.allowed_hours.to",
            "expected a time like \"08:00\" (quoted), not '25:00'",
        ),
        ("roles.r.require.allowed_hours.tz", "unknown time zone 'Mars/Base'"),
    ]


def test_allowed_hours_need_every_key() -> None:
    text = role("    require:\n      allowed_hours: {days: mon-fri, from: '08:00'}\n")
    assert sorted(key for _, key, _ in problems(text)) == [
        "roles.r.require.allowed_hours.to",
        "roles.r.require.allowed_hours.tz",
    ]


def test_allowed_hours_windows_including_overnight_and_wrapping_day_ranges() -> None:
    text = role(
        "    require:\n      allowed_hours:\n"
        "        {days: 'fri-mon', from: '22:00', to: '06:00', tz: UTC}\n"
    )
    hours = load_policy_text(text).roles["r"].require.allowed_hours
    assert hours is not None
    assert hours.days == frozenset({4, 5, 6, 0})
    friday_night = datetime(2026, 12, 4, 23, 0, tzinfo=UTC)
    saturday_early = datetime(2026, 12, 5, 5, 59, tzinfo=UTC)
    tuesday_early = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)  # belongs to Monday night
    wednesday_early = datetime(2026, 12, 9, 3, 0, tzinfo=UTC)  # Tuesday night: closed
    friday_noon = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert hours.allows(friday_night) and hours.allows(saturday_early)
    assert hours.allows(tuesday_early)
    assert not hours.allows(wednesday_early) and not hours.allows(friday_noon)


def test_allowed_hours_follow_the_time_zone_across_summer_time() -> None:
    hours = AllowedHours(frozenset(range(5)), time(8), time(18), "Europe/Berlin")
    # 07:30 UTC is 08:30 in winter (open) and 09:30 in summer (open); 06:30 UTC in summer is
    # 08:30 Berlin (open) but in winter 07:30 (closed).
    assert hours.allows(datetime(2026, 7, 1, 6, 30, tzinfo=UTC))
    assert not hours.allows(datetime(2026, 12, 1, 6, 30, tzinfo=UTC))
    assert hours.describe() == "mon,tue,wed,thu,fri 08:00-18:00 Europe/Berlin"


def test_max_active_and_break_glass_flags_are_checked() -> None:
    assert one_problem(role("    max_active: 0\n"))[1] == "roles.r.max_active"
    assert one_problem(role("    break_glass: maybe\n"))[1] == "roles.r.break_glass"


def test_stage_mfa_and_distinct_stage_approvers() -> None:
    text = role(
        "    approval:\n      distinct_stage_approvers: false\n      stages:\n"
        "        - {name: a, approvers: [group:dba], mfa: true}\n"
    )
    approval = load_policy_text(text).roles["r"].approval
    assert approval is not None
    assert not approval.distinct_stage_approvers
    assert approval.stages[0].mfa


def test_break_glass_settings_are_checked_and_set_once(tmp_path: Path) -> None:
    text = PEOPLE + "break_glass: {max_duration: soon, justification_min_length: 0}\n"
    assert [key for _, key, _ in problems(text)] == [
        "break_glass.max_duration",
        "break_glass.justification_min_length",
    ]
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(PEOPLE + "break_glass: {max_duration: 30m}\n")
    second.write_text("break_glass: {max_duration: 2h}\n")
    found = problems_of_files([first, second])
    assert len(found) == 1 and found[0][2].startswith("already set at ")


def problems_of_files(paths: list[Path]) -> list[tuple[int, str, str]]:
    import pytest

    from jitaccess.domain.errors import PolicyInvalid

    with pytest.raises(PolicyInvalid) as caught:
        load_policy_files(paths)
    return [(p.line, p.key, p.reason) for p in caught.value.problems]


def test_the_demo_policies_load() -> None:
    demo = Path(__file__).resolve().parents[2] / "src" / "jitaccess" / "demo"
    policy, _ = load_policy_files([demo / "policy.yaml", demo / "policy-postgres.yaml"])
    assert policy.roles["demo/emergency"].break_glass
    owner = policy.roles["demo/owner"].approval
    assert owner is not None and len(owner.stages) == 2 and owner.auto_approve
