"""Approval workflows through the REST API, on SQLite and PostgreSQL: break-glass with alerts and
review sign-off, bundles with partial, on-call auto-approval from a schedule file, escalation to
backup approvers on the fake clock, MFA on request and approval, capacity, allowed hours, dry
runs, and what each person may see."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from typer.testing import CliRunner

from jitaccess.bootstrap import apply_policy_files
from jitaccess.entrypoints import cli_access
from jitaccess.entrypoints.cli import app as cli_app
from jitaccess.entrypoints.cli_client import Client
from jitaccess.services.manage_tokens import create_token
from support.api import Api, TestClient, assert_problem

PEOPLE = ("alice", "bob", "dan", "carol", "erin", "sec", "frank", "olga", "mallory")

POLICY = """\
version: 1
admins: [group:security]
auditors: [user:erin]
users:
  alice: {email: alice@example.com, groups: [engineers]}
  bob: {groups: [dba]}
  dan: {groups: [dba]}
  carol: {groups: [leads]}
  erin: {}
  sec: {groups: [security]}
  frank: {groups: [sre], break_glass: true}
  olga: {email: olga@example.com, groups: [engineers]}
  mallory: {groups: [contractors]}
targets:
  demo: {type: fake}
schedules:
  primary: {file: oncall.yaml}
break_glass: {max_duration: 30m, justification_min_length: 15}
roles:
  demo/read:
    target: demo
    duration: {default: 30m, max: 2h}
  demo/admin:
    target: demo
    duration: {default: 30m, max: 4h}
    approval:
      stages:
        - name: dba
          approvers: [group:dba]
          escalate_after: 30m
          escalate_to: [user:carol]
      auto_approve:
        - {name: on-call, on_call: primary, max_duration: 1h}
  demo/schema:
    target: demo
    duration: {default: 30m, max: 4h}
    max_active: 1
    approval:
      stages:
        - {name: leads, approvers: [user:carol]}
  demo/secure:
    target: demo
    duration: {default: 30m, max: 1h}
    require: {mfa: true}
    approval:
      stages:
        - {name: dba, approvers: [group:dba], mfa: true}
  demo/office:
    target: demo
    duration: {default: 30m, max: 1h}
    require:
      allowed_hours: {days: sat-sun, from: "10:00", to: "12:00", tz: UTC}
  demo/emergency:
    target: demo
    duration: {default: 15m, max: 30m}
    break_glass: true
    approval:
      stages:
        - {name: reviewers, approvers: [user:carol]}
eligibility:
  - principals: [group:engineers, group:sre, group:contractors]
    roles: [demo/read, demo/admin, demo/schema, demo/secure, demo/office, demo/emergency]
"""

ONCALL = """\
shifts:
  - {who: olga@example.com, from: 2026-01-05T08:00Z, to: 2026-01-05T20:00Z}
"""


def setup(api: Api, tmp_path: Path) -> Api:
    """Apply this module's policy and give every person of it a token."""
    folder = tmp_path / "workflow-policy"
    folder.mkdir()
    (folder / "oncall.yaml").write_text(ONCALL)
    (folder / "policy.yaml").write_text(POLICY)
    apply_policy_files(api.container, [str(folder / "policy.yaml")])
    for person in PEOPLE:
        if person not in api.tokens:
            with api.container.uow() as uow:
                _, api.tokens[person] = create_token(
                    uow, api.clock, principal=person, created_by="test"
                )
    return api


def ask(api: Api, who: str, **body: Any) -> Any:
    return api.post(who, "/api/v1/requests", {"justification": "rotating the keys", **body})


def inbox(api: Api, who: str) -> list[dict[str, Any]]:
    response = api.get(who, "/api/v1/notifications")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def actions(api: Api, subject: str) -> list[str]:
    return [r["action"] for r in api.audit() if r["subject"] == subject]


# --- break-glass ---------------------------------------------------------------------------------
def test_break_glass_activates_alerts_and_waits_for_a_sign_off(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)
    response = ask(api, "alice", roles=["demo/emergency"], justification="prod is down, INC-9")
    assert response.status_code == 201, response.text
    request = response.json()
    assert (request["state"], request["break_glass"]) == ("approved", True)
    assert len(request["grants"]) == 1
    assert "request.break_glass" in actions(api, request["id"])
    # The role's approver and the admins are alerted; the one who broke the glass is not.
    for person in ("carol", "sec"):
        assert [n["kind"] for n in inbox(api, person)] == ["break-glass"]
    assert all(n["kind"] != "break-glass" for n in inbox(api, "alice"))
    (review,) = api.get("sec", "/api/v1/reviews", state="open").json()["items"]
    assert (review["principal"], review["request_id"]) == ("alice", request["id"])
    url = f"/api/v1/reviews/{review['id']}/sign-off"
    assert_problem(api.post("alice", url, {"comment": "all fine"}), 403, "forbidden")
    assert_problem(api.post("erin", url, {"comment": "all fine"}), 403, "forbidden")
    assert_problem(api.post("carol", url, {"comment": ""}), 422, "invalid-input")
    signed = api.post("carol", url, {"comment": "restart was needed; runbook updated"})
    assert signed.status_code == 200, signed.text
    assert (signed.json()["state"], signed.json()["signed_off_by"]) == ("signed_off", "carol")
    assert_problem(api.post("sec", url, {"comment": "again"}), 409, "conflict")
    assert api.get("sec", "/api/v1/reviews", state="open").json()["items"] == []
    assert "review.signed_off" in actions(api, review["id"])


def test_break_glass_rules_are_enforced(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)
    short = ask(api, "alice", roles=["demo/emergency"], justification="down")
    assert assert_problem(short, 422, "policy-violation")["rule"] == (
        "break_glass.justification_min_length"
    )
    long = ask(api, "alice", roles=["demo/emergency"], duration="1h", justification="x" * 20)
    assert assert_problem(long, 422, "policy-violation")["rule"] == "break_glass.max_duration"
    # A user marked break_glass may break glass on a role that normally needs approval...
    frank = ask(api, "frank", roles=["demo/schema"], break_glass=True, justification="y" * 20)
    assert frank.status_code == 201, frank.text
    assert frank.json()["state"] == "approved"
    # ...anyone else may not.
    alice = ask(api, "alice", roles=["demo/admin"], break_glass=True, justification="z" * 20)
    assert assert_problem(alice, 422, "policy-violation")["rule"] == "roles.demo/admin.break_glass"
    auditor_view = api.get("erin", "/api/v1/reviews").json()["items"]
    assert [r["principal"] for r in auditor_view] == ["frank"]
    assert_problem(
        api.post("erin", f"/api/v1/reviews/{auditor_view[0]['id']}/sign-off", {"comment": "ok"}),
        403,
        "forbidden",
    )


# --- bundles ------------------------------------------------------------------------------------
def test_partial_bundle_grants_the_approved_roles_only(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)
    api.clock.advance(timedelta(hours=13))  # olga is off call: nothing is auto-approved
    request = ask(api, "alice", roles=["demo/admin", "demo/schema"], partial=True).json()
    assert request["partial"] is True and request["state"] == "pending"
    denied = api.post("carol", f"/api/v1/requests/{request['id']}/deny", {"comment": "no"})
    assert denied.json()["state"] == "pending"  # demo/admin is still open
    approved = api.post("bob", f"/api/v1/requests/{request['id']}/approve", {"comment": "ok"})
    body = approved.json()
    assert body["state"] == "approved"
    (grant_id,) = body["grants"]
    assert api.grant("alice", grant_id)["role"] == "demo/admin"


def test_without_partial_one_denial_denies_the_bundle(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)
    api.clock.advance(timedelta(hours=13))
    request = ask(api, "alice", roles=["demo/admin", "demo/schema"]).json()
    api.post("bob", f"/api/v1/requests/{request['id']}/approve", {"comment": "ok"})
    denied = api.post("carol", f"/api/v1/requests/{request['id']}/deny", {"comment": "no"})
    assert (denied.json()["state"], denied.json()["grants"]) == ("denied", [])
    assert [n["kind"] for n in inbox(api, "alice")][:1] == ["denied"]


# --- auto-approval ------------------------------------------------------------------------------
def test_on_call_requester_is_auto_approved_with_the_rule_audited(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)  # the fake clock starts 2026-01-05 09:00Z, inside olga's shift
    preview = api.client.post(
        "/api/v1/requests",
        params={"dry_run": "true"},
        headers=api.auth("olga"),
        json={"roles": ["demo/admin"], "duration": "30m"},
    ).json()
    assert (preview["outcome"], preview["auto_approved"]) == ("granted", {"demo/admin": "on-call"})
    created = ask(api, "olga", roles=["demo/admin"], duration="30m").json()
    assert (created["state"], created["auto_approved"]) == ("approved", {"demo/admin": "on-call"})
    record = next(r for r in api.audit() if r["action"] == "request.auto_approved")
    assert record["data"] == {"role": "demo/admin", "rule": "on-call"}
    # Too long for the rule, or not on call: approval by people as usual.
    assert ask(api, "olga", roles=["demo/admin"], duration="2h").json()["state"] == "pending"
    assert ask(api, "alice", roles=["demo/admin"], duration="30m").json()["state"] == "pending"
    api.clock.advance(timedelta(hours=12))  # the shift is over
    assert ask(api, "olga", roles=["demo/admin"], duration="30m").json()["state"] == "pending"


# --- escalation ---------------------------------------------------------------------------------
def test_escalation_lets_the_backup_decide_and_tells_everyone(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)
    request = ask(api, "alice", roles=["demo/admin"], duration="2h").json()
    assert {n["kind"] for n in inbox(api, "bob")} == {"approval-needed"}
    early = api.post("carol", f"/api/v1/requests/{request['id']}/approve", {"comment": "ok"})
    assert assert_problem(early, 403, "forbidden")["rule"] == "not-an-approver"
    api.clock.advance(timedelta(minutes=31))
    assert api.work().escalated == 1
    assert api.work().escalated == 0  # announced once
    assert [n["kind"] for n in inbox(api, "carol")] == ["escalated"]
    assert "escalated" in [n["kind"] for n in inbox(api, "alice")]
    assert api.get("alice", f"/api/v1/requests/{request['id']}").json()["escalated"] == [
        "demo/admin#0"
    ]
    approved = api.post("carol", f"/api/v1/requests/{request['id']}/approve", {"comment": "ok"})
    assert approved.json()["state"] == "approved", approved.text
    assert actions(api, request["id"]).count("request.escalated") == 1


# --- MFA ----------------------------------------------------------------------------------------
def enroll(api: Api, who: str) -> pyotp.TOTP:
    secret = api.post(who, "/api/v1/mfa/enroll").json()["secret"]
    totp = pyotp.TOTP(secret)
    confirmed = api.post(who, "/api/v1/mfa/confirm", {"code": totp.at(api.clock.now())})
    assert confirmed.status_code == 200, confirmed.text
    api.clock.advance(timedelta(seconds=30))  # the confirming code's step is used up
    return totp


def test_mfa_is_required_to_request_and_to_approve(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)
    missing = ask(api, "alice", roles=["demo/secure"])
    assert assert_problem(missing, 422, "policy-violation")["rule"] == "mfa-required"
    alice, bob = enroll(api, "alice"), enroll(api, "bob")
    wrong = ask(api, "alice", roles=["demo/secure"], mfa_code="000000")
    assert assert_problem(wrong, 422, "policy-violation")["rule"] == "mfa-invalid"
    code = alice.at(api.clock.now())
    request = ask(api, "alice", roles=["demo/secure"], mfa_code=code)
    assert request.status_code == 201, request.text
    replay = ask(api, "alice", roles=["demo/secure"], mfa_code=code)
    assert assert_problem(replay, 422, "policy-violation")["rule"] == "mfa-invalid"
    url = f"/api/v1/requests/{request.json()['id']}/approve"
    no_code = api.post("bob", url, {"comment": "ok"})
    assert assert_problem(no_code, 422, "policy-violation")["rule"] == "mfa-required"
    approved = api.post("bob", url, {"comment": "ok", "mfa_code": bob.at(api.clock.now())})
    assert approved.json()["state"] == "approved", approved.text
    failed = [r for r in api.audit() if r["action"] == "mfa.failed"]
    assert [r["data"]["reason"] for r in failed] == ["wrong-code", "replayed"]
    assert all(code not in str(r) for r in api.audit())


# --- capacity, hours, visibility ----------------------------------------------------------------
def test_max_active_caps_live_grants_across_people(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)
    first = ask(api, "alice", roles=["demo/schema"]).json()
    second = ask(api, "olga", roles=["demo/schema"]).json()
    approved = api.post("carol", f"/api/v1/requests/{first['id']}/approve").json()
    assert approved["state"] == "approved"
    full = api.post("carol", f"/api/v1/requests/{second['id']}/approve")
    assert assert_problem(full, 422, "policy-violation")["rule"] == "roles.demo/schema.max_active"
    third = ask(api, "mallory", roles=["demo/schema"])
    assert assert_problem(third, 422, "policy-violation")["rule"] == "roles.demo/schema.max_active"
    api.post("alice", f"/api/v1/grants/{approved['grants'][0]}/deactivate", {"comment": "done"})
    api.work()
    retry = api.post("carol", f"/api/v1/requests/{second['id']}/approve")
    assert retry.json()["state"] == "approved", retry.text


def test_allowed_hours_refuse_outside_the_window(api: Api, tmp_path: Path) -> None:
    setup(api, tmp_path)  # Monday 09:00 UTC; the window is weekends 10-12 UTC
    refused = ask(api, "alice", roles=["demo/office"])
    body = assert_problem(refused, 422, "policy-violation")
    assert body["rule"] == "roles.demo/office.require.allowed_hours"
    assert "sat,sun 10:00-12:00 UTC" in body["detail"]
    api.clock.advance(timedelta(days=5, hours=1, minutes=30))  # Saturday 10:30
    assert ask(api, "alice", roles=["demo/office"]).status_code == 201


def test_other_peoples_requests_are_invisible_and_the_attempt_is_audited(
    api: Api, tmp_path: Path
) -> None:
    setup(api, tmp_path)
    request = ask(api, "alice", roles=["demo/schema"]).json()
    for outsider in ("mallory", "bob"):
        hidden = api.get(outsider, f"/api/v1/requests/{request['id']}")
        missing = api.get(outsider, "/api/v1/requests/req_doesnotexist")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["detail"].replace(request["id"], "X") == missing.json()[
            "detail"
        ].replace("req_doesnotexist", "X")
    refused = [r for r in api.audit() if r["action"] == "request.read"]
    assert {r["actor"] for r in refused} == {"mallory", "bob"}
    assert all(r["outcome"] == "refused" for r in refused)
    # The approver of the role sees it and has it to decide; the auditor sees it and cannot act.
    assert api.get("carol", f"/api/v1/requests/{request['id']}").status_code == 200
    to_approve = api.get("carol", "/api/v1/requests", to_approve="true").json()["items"]
    assert [r["id"] for r in to_approve] == [request["id"]]
    assert api.get("erin", f"/api/v1/requests/{request['id']}").status_code == 200
    assert api.post("erin", f"/api/v1/requests/{request['id']}/approve").status_code == 403
    assert [r["id"] for r in api.get("mallory", "/api/v1/requests").json()["items"]] == []


def test_extensions_need_mfa_where_the_role_does_and_break_glass_never_extends(
    api: Api, tmp_path: Path
) -> None:
    setup(api, tmp_path)
    alice, bob = enroll(api, "alice"), enroll(api, "bob")
    created = ask(api, "alice", roles=["demo/secure"], mfa_code=alice.at(api.clock.now()))
    url = f"/api/v1/requests/{created.json()['id']}/approve"
    api.clock.advance(timedelta(seconds=30))
    approved = api.post("bob", url, {"mfa_code": bob.at(api.clock.now())}).json()
    grant_url = f"/api/v1/grants/{approved['grants'][0]}/extend"
    api.clock.advance(timedelta(seconds=30))
    without = api.post("alice", grant_url, {"duration": "10m"})
    assert assert_problem(without, 422, "policy-violation")["rule"] == "mfa-required"
    extended = api.post(
        "alice", grant_url, {"duration": "10m", "mfa_code": alice.at(api.clock.now())}
    )
    assert extended.status_code == 200, extended.text
    # demo/secure asks approval again for an extension: its approvers are told.
    assert extended.json()["pending_approval"] is True
    assert "approval-needed" in [n["kind"] for n in inbox(api, "dan")]

    emergency = ask(api, "olga", roles=["demo/emergency"], justification="db on fire INC-77")
    grant_id = emergency.json()["grants"][0]
    refused = api.post("olga", f"/api/v1/grants/{grant_id}/extend", {"duration": "5m"})
    assert assert_problem(refused, 409, "conflict")["rule"] == "break-glass-extension"


# --- the commands -----------------------------------------------------------------------------
def run_cli(api: Api, who: str, monkeypatch: pytest.MonkeyPatch, *args: str, code: int = 0) -> str:
    """Run a `jitaccess` API command in-process, its Client talking to the test app as `who`."""

    def client() -> Client:
        real = Client(url="http://testserver", token=api.tokens[who])
        real.http = TestClient(
            api.client.app, base_url="http://testserver/api/v1", headers=api.auth(who)
        )
        return real

    monkeypatch.setattr(cli_access, "Client", client)
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(cli_app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_cli_dry_run_break_glass_reviews_sign_off_and_inbox(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup(api, tmp_path)
    api.clock.advance(timedelta(hours=13))  # olga off call
    preview = run_cli(api, "alice", monkeypatch, "request", "demo/admin", "--dry-run")
    assert "would wait for approval" in preview
    assert "bob, dan" in preview and "after 30m to carol" in preview
    refused = run_cli(
        api,
        "alice",
        monkeypatch,
        "request",
        "demo/admin",
        "--break-glass",
        "-r",
        "x" * 20,
        code=3,
    )
    assert "roles.demo/admin.break_glass" in refused
    created = run_cli(
        api,
        "frank",
        monkeypatch,
        "request",
        "demo/emergency",
        "-r",
        "db is down, INC-12345",
    )
    assert "break-glass" in created and "alerted" in created
    listed = run_cli(api, "carol", monkeypatch, "reviews", "--state", "open", "--json")
    (review,) = json.loads(listed)["items"]
    assert review["principal"] == "frank"
    assert "break-glass" in run_cli(api, "carol", monkeypatch, "notifications")
    run_cli(api, "frank", monkeypatch, "sign-off", review["id"], "-m", "mine", code=3)
    signed = run_cli(api, "carol", monkeypatch, "sign-off", review["id"], "-m", "checked")
    assert "signed_off" in signed
    assert (
        json.loads(run_cli(api, "carol", monkeypatch, "reviews", "--state", "open", "--json"))[
            "items"
        ]
        == []
    )
