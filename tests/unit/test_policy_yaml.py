"""The policy loader: every rule refuses bad input with file, line, key path and a reason."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest

from jitaccess.adapters.policy_yaml import (
    load_policy_files,
    load_policy_text,
    policy_digest,
    policy_to_document,
)
from jitaccess.domain.errors import PolicyInvalid
from jitaccess.domain.policy import (
    ConnectionRef,
    PrincipalKind,
    PrincipalRef,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"

# Line numbers in the tests below count from line 1 of these texts.
PEOPLE = """\
users:
  alice: {email: alice@example.com, groups: [engineers]}
  bob: {email: bob@example.com, groups: [dba]}
  carol: {groups: [dba, security]}
targets:
  demo: {type: fake}
"""


def problems(text: str, filename: str = "p.yaml") -> list[tuple[int, str, str]]:
    with pytest.raises(PolicyInvalid) as caught:
        load_policy_text(text, filename)
    assert all(p.file == filename for p in caught.value.problems)
    return [(p.line, p.key, p.reason) for p in caught.value.problems]


def one_problem(text: str) -> tuple[int, str, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def role(body: str) -> str:
    """PEOPLE plus one role `r` on `demo`, its body starting on line 9."""
    return PEOPLE + "roles:\n  r:\n    target: demo\n" + body


# --- the example --------------------------------------------------------------------------
def test_example_policy_loads_with_every_section() -> None:
    policy, _ = load_policy_files([EXAMPLE])
    assert set(policy.users) == {
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
        "frank",
        "grace",
        "deploy-bot",
    }
    assert policy.users["deploy-bot"].kind is PrincipalKind.SERVICE
    assert policy.targets["prod-db"].connection == ConnectionRef(env="PROD_DB_ADMIN_URL")
    assert policy.targets["demo"].connection is None
    readonly = policy.roles["prod-db/readonly"]
    assert readonly.grants == (("postgres_roles", ("readonly",)),)
    assert readonly.duration.max == timedelta(hours=4)
    assert readonly.require.ticket == "^INC-[0-9]+$"
    assert readonly.approval is not None
    stage = readonly.approval.stages[0]
    assert stage.approvers == (PrincipalRef("group", "dba"), PrincipalRef("user", "carol"))
    assert stage.escalate_after == timedelta(minutes=30)
    assert policy.roles["demo/viewer"].approval is None
    assert policy.eligibility[0].valid_until == date(2027, 6, 30)
    assert policy.admins == (PrincipalRef("group", "security"),)
    assert policy.auditors == (PrincipalRef("user", "erin"),)


# --- document shape -----------------------------------------------------------------------
def test_yaml_syntax_error_is_one_problem_with_its_line() -> None:
    line, key, reason = one_problem("users:\n  alice: {groups: [a]\nroles: {}\n")
    assert (line, key) == (3, "(document)")
    assert reason.startswith("YAML syntax error")


def test_empty_document_is_refused() -> None:
    assert one_problem("# only a comment\n")[:2] == (1, "(document)")


def test_non_mapping_top_level_is_refused() -> None:
    assert one_problem("- users\n") == (
        1,
        "(document)",
        "expected a mapping at the top, got a list",
    )


def test_unknown_key_is_reported_with_file_and_line() -> None:
    text = PEOPLE.replace("{email: bob@example.com,", "{emial: bob@example.com,")
    assert one_problem(text) == (
        3,
        "users.bob.emial",
        "unknown key 'emial' (expected one of: email, groups, kind, break_glass)",
    )


def test_unknown_top_level_key_is_reported() -> None:
    line, key, reason = one_problem(PEOPLE + "rolse: {}\n")
    assert (line, key) == (7, "rolse")
    assert reason.startswith("unknown key 'rolse' (expected one of: version, admins")


def test_duplicate_key_in_one_mapping_is_refused() -> None:
    text = PEOPLE + "  demo: {type: fake}\n"
    assert one_problem(text) == (7, "targets.demo", "duplicate key 'demo'")


def test_yaml_merge_keys_are_refused() -> None:
    text = "users:\n  base: &b {groups: [g]}\n  alice: {<<: *b}\n"
    assert one_problem(text) == (
        3,
        "users.alice",
        "merge keys (<<) are not supported: write the keys out",
    )


@pytest.mark.parametrize("tag", ["!!set", "!!python/object:os.system", "!custom"])
def test_explicitly_tagged_sections_are_refused(tag: str) -> None:
    line, key, reason = one_problem(f"users: {tag} {{alice: }}\n")
    assert (line, key) == (1, "users")
    assert reason.startswith("expected a mapping, got a value tagged ")


def test_only_version_1_is_accepted() -> None:
    assert one_problem("version: 2\n" + PEOPLE) == (1, "version", "unsupported version 2 (use 1)")
    load_policy_text("version: 1\n" + PEOPLE)


def test_all_problems_are_reported_together() -> None:
    text = role(
        "    duration: {default: 4 hours, max: 1h}\n"
        "    require: {ticket: '[', mfa: yes}\n"
        "eligibility:\n"
        "  - {principals: [user:zed], roles: [nope]}\n"
    )
    assert [(line, key) for line, key, _ in problems(text)] == [
        (10, "roles.r.duration.default"),
        (11, "roles.r.require.ticket"),
        (11, "roles.r.require.mfa"),
        (13, "eligibility[0].principals[0]"),
        (13, "eligibility[0].roles[0]"),
    ]


# --- users and principals -----------------------------------------------------------------
def test_invalid_user_name_is_refused() -> None:
    line, key, reason = one_problem("users:\n  alice: {}\n  -bad: {}\n")
    assert (line, key) == (3, "users.-bad")
    assert reason.startswith("user name '-bad' is not valid")


def test_user_kind_must_be_user_or_service() -> None:
    text = "users:\n  bot: {kind: robot}\n"
    assert one_problem(text) == (2, "users.bot.kind", "kind must be user or service, not 'robot'")


def test_user_without_settings_gets_defaults() -> None:
    policy = load_policy_text("users:\n  alice:\n  bot: {kind: service}\n")
    assert policy.users["alice"].kind is PrincipalKind.USER
    assert policy.users["alice"].groups == ()
    assert policy.users["bot"].kind is PrincipalKind.SERVICE


def test_integer_where_a_name_is_expected_suggests_quoting() -> None:
    assert one_problem("users:\n  alice: {groups: [2024]}\n") == (
        2,
        "users.alice.groups[0]",
        "expected a string, got an integer (quote it)",
    )


def test_admin_naming_unknown_principal_is_refused() -> None:
    assert one_problem("admins: [user:zed]\n" + PEOPLE) == (
        1,
        "admins[0]",
        "unknown principal 'user:zed'",
    )


def test_group_nobody_has_is_refused() -> None:
    assert one_problem("auditors: [group:auditors]\n" + PEOPLE) == (
        1,
        "auditors[0]",
        "unknown group 'auditors' (no user has it)",
    )


def test_malformed_principal_ref_is_refused() -> None:
    line, key, reason = one_problem("admins: [alice]\n" + PEOPLE)
    assert (line, key) == (1, "admins[0]")
    assert "user:NAME or group:NAME" in reason


# --- targets ------------------------------------------------------------------------------
def test_inline_connection_string_is_refused() -> None:
    text = PEOPLE + "  db:\n    type: postgres\n    connection: postgresql://admin:pw@db/app\n"
    line, key, reason = one_problem(text)
    assert (line, key) == (9, "targets.db.connection")
    assert "credentials must be referenced by env or file" in reason


@pytest.mark.parametrize("secret", ["password", "url", "dsn"])
def test_credential_keys_are_refused(secret: str) -> None:
    text = PEOPLE + f"  db: {{type: postgres, connection: {{env: DB}}, {secret}: x}}\n"
    line, key, reason = one_problem(text)
    assert (line, key) == (7, f"targets.db.{secret}")
    assert "credentials must be referenced by env or file" in reason


def test_connection_needs_exactly_one_of_env_or_file() -> None:
    text = PEOPLE + "  db: {type: postgres, connection: {env: DB, file: /run/db}}\n"
    assert one_problem(text) == (7, "targets.db.connection", "needs exactly one of env or file")


def test_connection_by_file_is_accepted() -> None:
    text = PEOPLE + "  db: {type: ldap, connection: {file: /run/secrets/ldap}}\n"
    target = load_policy_text(text).targets["db"]
    assert target.connection == ConnectionRef(file="/run/secrets/ldap")


def test_target_other_than_fake_needs_a_connection() -> None:
    line, key, reason = one_problem(PEOPLE + "  db: {type: postgres}\n")
    assert (line, key) == (7, "targets.db.connection")
    assert "needs connection" in reason


def test_bad_target_type_is_refused() -> None:
    line, key, _ = one_problem(PEOPLE + "  db: {type: Postgres, connection: {env: DB}}\n")
    assert (line, key) == (7, "targets.db.type")


def test_target_options_are_stored_as_sorted_pairs() -> None:
    text = PEOPLE + "  db: {type: ssh, connection: {env: CA}, options: {port: 22, hosts: [a, b]}}\n"
    target = load_policy_text(text).targets["db"]
    assert target.options == (("hosts", ("a", "b")), ("port", 22))
    hash(target)


def test_plain_url_option_is_accepted() -> None:
    text = PEOPLE + "  hook: {type: webhook, connection: {env: K}, options: {url: 'https://x/y'}}\n"
    assert load_policy_text(text).targets["hook"].options == (("url", "https://x/y"),)


def test_password_in_an_option_url_is_refused() -> None:
    text = (
        PEOPLE + "  hook: {type: webhook, connection: {env: K}, options: {to: 'https://u:pw@x'}}\n"
    )
    assert one_problem(text)[:2] == (7, "targets.hook.options.to")


# --- round trip and digest ----------------------------------------------------------------
def test_round_trip_through_document() -> None:
    policy, _ = load_policy_files([EXAMPLE])
    document = policy_to_document(policy)
    assert load_policy_text(json.dumps(document)) == policy
    assert document["roles"]["prod-db/readonly"]["duration"] == {
        "default": "1h",
        "max": "4h",
        "min": "1s",
    }
    assert document["eligibility"][0]["until"] == "2027-06-30"
    assert document["admins"] == ["group:security"]


def test_document_keys_are_sorted() -> None:
    policy, _ = load_policy_files([EXAMPLE])
    document = policy_to_document(policy)
    assert list(document) == sorted(document)
    assert list(document["roles"]["prod-db/readonly"]) == sorted(
        document["roles"]["prod-db/readonly"]
    )


def test_digest_ignores_spelling_and_follows_content() -> None:
    spelled = load_policy_text(role("    duration: {default: 60m, max: PT4H}\n"))
    plain = load_policy_text(role("    duration:\n      default: 1h\n      max: 4h\n"))
    longer = load_policy_text(role("    duration: {default: 1h, max: 5h}\n"))
    assert policy_digest(spelled) == policy_digest(plain)
    assert policy_digest(plain) != policy_digest(longer)
    assert len(policy_digest(plain)) == 64


# --- several files ------------------------------------------------------------------------
def test_multiple_files_merge(tmp_path: Path) -> None:
    first = tmp_path / "people.yaml"
    first.write_text("admins: [user:alice]\n" + PEOPLE)
    second = tmp_path / "roles.yaml"
    second.write_text(
        "admins: [group:security]\nusers:\n  dave: {}\n"
        "roles:\n  r: {target: demo}\neligibility:\n  - {principals: [user:dave], roles: [r]}\n"
    )
    policy, source = load_policy_files([first, second])
    assert set(policy.users) == {"alice", "bob", "carol", "dave"}
    assert policy.admins == (PrincipalRef("user", "alice"), PrincipalRef("group", "security"))
    assert policy.eligibility[0].roles == ("r",)
    assert source == (
        f"# --- file: {first}\n{first.read_text()}# --- file: {second}\n{second.read_text()}"
    )


def test_name_defined_in_two_files_names_the_second_place(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(PEOPLE)
    second = tmp_path / "b.yaml"
    second.write_text("targets:\n  other: {type: fake}\n  demo: {type: fake}\n")
    with pytest.raises(PolicyInvalid) as caught:
        load_policy_files([first, second])
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.key) == (str(second), 3, "targets.demo")
    assert problem.reason == f"target 'demo' is already defined at {first}:6"


def test_problems_in_several_files_name_their_own_file(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(PEOPLE + "  bad: {type: fake, colour: red}\n")
    second = tmp_path / "b.yaml"
    second.write_text("admins: [user:zed]\n")
    with pytest.raises(PolicyInvalid) as caught:
        load_policy_files([first, second])
    assert [(p.file, p.line, p.key) for p in caught.value.problems] == [
        (str(first), 7, "targets.bad.colour"),
        (str(second), 1, "admins[0]"),
    ]


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid) as caught:
        load_policy_files([tmp_path / "nope.yaml"])
    [problem] = caught.value.problems
    assert problem.file == str(tmp_path / "nope.yaml")
    assert problem.reason.startswith("cannot read the file")


def test_lone_surrogate_escapes_are_refused_with_their_line() -> None:
    text = 'users:\n  alice: {email: "a\\ud800@example.com"}\n'
    with pytest.raises(PolicyInvalid) as refused:
        load_policy_text(text, "p.yaml")
    (problem,) = refused.value.problems
    assert (problem.file, problem.line, problem.key) == ("p.yaml", 2, "(document)")
    assert "U+D800" in problem.reason


def test_control_characters_and_line_separators_are_refused() -> None:
    for escape in ("\\x85", "\\u2028", "\\x7f", "\\x01"):
        text = f'users:\n  alice: {{email: "a{escape}@example.com"}}\n'
        with pytest.raises(PolicyInvalid) as refused:
            load_policy_text(text, "p.yaml")
        assert refused.value.problems[0].line == 2, escape
