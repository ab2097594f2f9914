"""The server-host commands as a user runs them: policy validate/plan/apply, tokens, audit."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from support.databases import POLICY
from support.processes import base_env, cli, cli_json


def _env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path)


def test_validate_names_file_line_and_key_and_exits_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        POLICY.replace(
            "duration: {default: 30m, max: 4h}", "duration: {default: 30m, max: 4 hours}"
        )
    )
    result = cli(_env(tmp_path), "policy", "validate", str(bad), check=False)
    assert result.returncode == 3
    assert f"{bad}:20: roles.demo/admin.duration.max:" in result.stderr
    assert "nothing was changed" in result.stderr


def test_plan_then_apply_is_versioned_and_unchanged_apply_is_a_no_op(tmp_path: Path) -> None:
    env = _env(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    plan = cli_json(env, "policy", "plan", str(policy))
    assert {"action": "add", "kind": "role", "name": "demo/admin", "details": []} in plan
    assert "applied policy version 1" in cli(env, "policy", "apply", str(policy)).stdout
    assert "unchanged" in cli(env, "policy", "apply", str(policy)).stdout
    policy.write_text(POLICY.replace("max: 4h", "max: 8h"))
    changed = cli(env, "policy", "plan", str(policy)).stdout
    assert "~ role demo/admin" in changed and "duration.max: 4h -> 8h" in changed
    assert "applied policy version 2" in cli(env, "policy", "apply", str(policy)).stdout
    applied = [r for r in cli_json(env, "audit", "tail", "--db") if r["action"] == "policy.applied"]
    assert [r["data"]["version"] for r in applied] == [1, 2]
    assert all(r["actor"].startswith("host:") for r in applied)


def test_token_secret_is_shown_once_and_stored_only_as_a_hash(tmp_path: Path) -> None:
    env = _env(tmp_path)
    created = cli_json(env, "token", "create", "--principal", "alice")
    listed = cli_json(env, "token", "list")
    assert created["token"].startswith("jit_")
    assert created["token"] not in json.dumps(listed)
    with sqlite3.connect(tmp_path / "jitaccess.db") as db:
        dump = "\n".join(db.iterdump())
    assert created["token"] not in dump
    trail = json.dumps(cli_json(env, "audit", "tail", "--db"))
    assert "token.created" in trail and created["token"] not in trail


def test_audit_verify_names_an_edited_row_and_an_export_verifies_offline(tmp_path: Path) -> None:
    env = _env(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    cli(env, "policy", "apply", str(policy))
    for person in ("alice", "bob", "sam"):
        cli(env, "token", "create", "--principal", person)
    assert cli(env, "audit", "verify", "--db").returncode == 0
    export = tmp_path / "audit.jsonl"
    cli(env, "audit", "export", "--format", "jsonl", "--db", "-o", str(export))
    assert cli(env, "audit", "verify", "--file", str(export)).returncode == 0

    with sqlite3.connect(tmp_path / "jitaccess.db") as db:
        db.execute("UPDATE audit_log SET subject = 'tok_forged' WHERE seq = 3")
    broken = cli(env, "audit", "verify", "--db", check=False)
    assert broken.returncode == 1
    assert "broken at record 3" in broken.stdout

    lines = export.read_text().splitlines()
    record = json.loads(lines[1])
    record["actor"] = "someone-else"
    lines[1] = json.dumps(record)
    export.write_text("\n".join(lines) + "\n")
    offline = cli_json(env, "audit", "verify", "--file", str(export), check=False)
    assert offline["ok"] is False and offline["first_bad_seq"] == 2


def test_server_host_refusals_use_the_same_exit_codes_as_the_api(tmp_path: Path) -> None:
    env = _env(tmp_path)
    missing = cli(env, "token", "revoke", "tok_does_not_exist", check=False)
    assert missing.returncode == 4 and "no token tok_does_not_exist" in missing.stderr
    bad_name = cli(env, "token", "create", "--principal", "user:alice", check=False)
    assert bad_name.returncode == 2 and "field" not in bad_name.stdout
