"""The REST API over a real SQLite file: auth, problem+json errors, the request and grant lifecycle,
audit, policy, and the operator endpoints. The worker is driven by hand with a fake clock."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.bootstrap import Container, apply_policy_files, build, upgrade
from jitaccess.clock import FakeClock
from jitaccess.entrypoints.api import create_app
from jitaccess.services.manage_tokens import create_token
from jitaccess.services.run_due_work import WorkerOptions, WorkReport, run_due_work
from jitaccess.settings import Settings
from support.databases import database_url

with warnings.catch_warnings():
    # Starlette 1.x asks for `httpx2` behind its TestClient; the project ships plain httpx,
    # which still works. Without this, warnings-as-errors fails the import itself.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"
PEOPLE = ("alice", "bob", "carol", "erin", "sec")

POLICY = """\
version: 1
admins: [group:security]
auditors: [user:erin]
users:
  alice: {email: alice@example.com, groups: [engineers]}
  bob: {email: bob@example.com, groups: [dba]}
  carol: {email: carol@example.com}
  erin: {email: erin@example.com}
  sec: {groups: [security]}
targets:
  demo:
    type: fake
roles:
  demo/read:
    target: demo
    grants: {fake_roles: [reader]}
    duration: {default: 30m, max: 2h}
  demo/admin:
    target: demo
    grants: {fake_roles: [admin]}
    duration: {default: 30m, max: 4h}
    require: {justification: true, ticket: '^INC-[0-9]+$'}
    approval:
      stages:
        - name: dba
          approvers: [group:dba]
          min_approvals: 1
eligibility:
  - principals: [group:engineers]
    roles: [demo/read, demo/admin]
"""

# Line 17 (1-based) is the `duration` of demo/read; the bad document breaks it there.
BAD_POLICY = POLICY.replace(
    "duration: {default: 30m, max: 2h}", "duration: {default: 30m, max: forever}"
)
BAD_LINE = POLICY.splitlines().index("    duration: {default: 30m, max: 2h}") + 1

ADMIN_ASK = {
    "roles": ["demo/admin"],
    "duration": "1h",
    "justification": "rotate the keys",
    "ticket": "INC-42",
}


@dataclass
class Api:
    client: TestClient
    container: Container
    clock: FakeClock
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    # TestClient is typed against httpx2, which is not installed: say what comes back.
    def get(self, who: str, url: str, **params: Any) -> httpx.Response:
        response: httpx.Response = self.client.get(url, headers=self.auth(who), params=params)
        return response

    def post(self, who: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        response: httpx.Response = self.client.post(url, headers=self.auth(who), json=body)
        return response

    def ask(self, who: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.post(who, "/api/v1/requests", body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def work(self) -> WorkReport:
        c = self.container
        return run_due_work(c.uow, c.clock, c.connectors, c.box, WorkerOptions())

    def grant(self, who: str, grant_id: str) -> dict[str, Any]:
        response = self.get(who, f"/api/v1/grants/{grant_id}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def audit(self) -> list[dict[str, Any]]:
        response = self.get("erin", "/api/v1/audit")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def policy_version(self) -> int:
        version: int = self.get("alice", "/api/v1/policy").json()["version"]
        return version


def make_container(tmp_path: Path, database_url: str | None = None) -> Container:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url or f"sqlite:///{tmp_path}/t.db",
        run_worker=False,
    )
    return build(settings, clock=FakeClock())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """Every API test runs on both stores: SQLite in tmp_path, a scratch PostgreSQL database."""
    with database_url(request.param, tmp_path) as url:
        yield from _api_on(tmp_path, url)


def _api_on(tmp_path: Path, url: str) -> Iterator[Api]:
    container = make_container(tmp_path, url)
    upgrade(container)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    apply_policy_files(container, [str(policy_file)])
    tokens = {}
    for person in PEOPLE:
        with container.uow() as uow:
            _, tokens[person] = create_token(
                uow, container.clock, principal=person, created_by="test"
            )
    assert isinstance(container.clock, FakeClock)
    with TestClient(create_app(container)) as client:
        yield Api(client, container, container.clock, tokens)
    container.close()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://jitaccess.dev/problems/{code}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def approved_admin_grant(api: Api) -> str:
    request = api.ask("alice", ADMIN_ASK)
    approved = api.post("bob", f"/api/v1/requests/{request['id']}/approve", {"comment": "ok"})
    assert approved.status_code == 200, approved.text
    grant_id: str = approved.json()["grants"][0]
    return grant_id


def active_read_grant(api: Api) -> str:
    request = api.ask("alice", {"roles": ["demo/read"], "duration": "30m"})
    grant_id: str = request["grants"][0]
    api.work()
    assert api.grant("alice", grant_id)["state"] == "active"
    return grant_id


# --- requests ---------------------------------------------------------------------------------


def test_request_without_approval_is_granted_and_active_after_a_worker_pass(api: Api) -> None:
    request = api.ask("alice", {"roles": ["demo/read"], "duration": "30m", "justification": "x"})

    assert request["state"] == "approved"
    assert request["requester"] == "alice"
    assert request["duration"] == "30m"
    assert request["duration_seconds"] == 1800
    assert request["created_at"] == "2026-01-05T09:00:00Z"
    [grant_id] = request["grants"]
    grant = api.grant("alice", grant_id)
    assert grant["state"] == "activating"
    assert grant["request_id"] == request["id"]
    assert grant["ends_at"] == "2026-01-05T09:30:00Z"

    report = api.work()

    assert report.provisioned == 1
    assert api.grant("alice", grant_id)["state"] == "active"
    check = api.get("alice", "/api/v1/check", role="demo/read").json()
    assert check == {
        "principal": "alice",
        "role": "demo/read",
        "active": True,
        "until": "2026-01-05T09:30:00Z",
        "grants": [grant_id],
    }


def test_request_needing_approval_waits_then_an_approver_approves_it(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)
    assert request["state"] == "pending"
    assert request["grants"] == []
    assert request["ticket"] == "INC-42"
    to_approve = api.get("bob", "/api/v1/requests", to_approve="true").json()["items"]
    assert [r["id"] for r in to_approve] == [request["id"]]

    response = api.post("bob", f"/api/v1/requests/{request['id']}/approve", {"comment": "go"})

    assert response.status_code == 200, response.text
    approved = response.json()
    assert approved["state"] == "approved"
    assert approved["approvals"][0]["approver"] == "bob"
    assert approved["approvals"][0]["decision"] == "approve"
    assert approved["approvals"][0]["comment"] == "go"
    [grant_id] = approved["grants"]
    api.work()
    assert api.grant("alice", grant_id)["state"] == "active"


def test_requester_approving_own_request_is_refused_and_audited(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)

    response = api.post("alice", f"/api/v1/requests/{request['id']}/approve")

    body = assert_problem(response, 403, "self-approval")
    assert body["rule"] == "self-approval"
    refused = [
        r for r in api.audit() if r["subject"] == request["id"] and r["outcome"] == "refused"
    ]
    assert [(r["actor"], r["action"]) for r in refused] == [("alice", "request.approve")]
    assert api.get("alice", f"/api/v1/requests/{request['id']}").json()["state"] == "pending"


def test_approving_a_request_that_is_already_approved_is_a_conflict(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)
    assert api.post("bob", f"/api/v1/requests/{request['id']}/approve").status_code == 200

    again = api.post("bob", f"/api/v1/requests/{request['id']}/approve")

    assert_problem(again, 409, "conflict")


def test_approver_denies_a_pending_request(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)

    response = api.post("bob", f"/api/v1/requests/{request['id']}/deny", {"comment": "not now"})

    assert response.status_code == 200, response.text
    denied = response.json()
    assert denied["state"] == "denied"
    assert denied["grants"] == []
    assert denied["approvals"][0]["decision"] == "deny"
    listed = api.get("alice", "/api/v1/requests", state="denied").json()["items"]
    assert [r["id"] for r in listed] == [request["id"]]


def test_someone_who_is_not_an_approver_cannot_decide(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)

    response = api.post("carol", f"/api/v1/requests/{request['id']}/approve")

    assert assert_problem(response, 403, "forbidden")["rule"] == "not-an-approver"


def test_requester_cancels_a_pending_request(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)

    response = api.post("alice", f"/api/v1/requests/{request['id']}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    late = api.post("bob", f"/api/v1/requests/{request['id']}/approve")
    assert_problem(late, 409, "conflict")


def test_someone_else_cannot_cancel_a_request(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)

    response = api.post("bob", f"/api/v1/requests/{request['id']}/cancel", {"comment": "mine?"})

    assert assert_problem(response, 403, "forbidden")["rule"] == "not-the-requester"
    assert api.get("alice", f"/api/v1/requests/{request['id']}").json()["state"] == "pending"


def test_a_bad_duration_is_refused_naming_the_field(api: Api) -> None:
    response = api.post("alice", "/api/v1/requests", {"roles": ["demo/read"], "duration": "soon"})

    body = assert_problem(response, 422, "invalid-input")
    assert body["field"] == "body.duration"
    assert "not a duration" in body["detail"]


def test_a_duration_over_the_max_is_refused_naming_the_rule(api: Api) -> None:
    response = api.post("alice", "/api/v1/requests", {"roles": ["demo/read"], "duration": "3h"})

    body = assert_problem(response, 422, "policy-violation")
    assert body["rule"] == "roles.demo/read.duration.max"


def test_a_missing_requirement_is_refused_naming_the_rule(api: Api) -> None:
    ask = {**ADMIN_ASK, "ticket": "whenever"}

    response = api.post("alice", "/api/v1/requests", ask)

    assert assert_problem(response, 422, "policy-violation")["rule"] == (
        "roles.demo/admin.require.ticket"
    )


def test_unknown_fields_in_a_body_are_refused(api: Api) -> None:
    response = api.post("alice", "/api/v1/requests", {"roles": ["demo/read"], "reason": "x"})

    assert assert_problem(response, 422, "invalid-input")["field"] == "body.reason"


def test_a_principal_without_eligibility_is_refused(api: Api) -> None:
    response = api.post("carol", "/api/v1/requests", {"roles": ["demo/read"]})

    body = assert_problem(response, 403, "not-eligible")
    assert body["rule"] == "eligibility:demo/read"


def test_dry_run_previews_and_creates_nothing(api: Api) -> None:
    response = api.client.post(
        "/api/v1/requests",
        params={"dry_run": "true"},
        headers=api.auth("alice"),
        json=ADMIN_ASK,
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "dry_run": True,
        "roles": ["demo/admin"],
        "duration": "1h",
        "duration_seconds": 3600,
        "starts_at": "2026-01-05T09:00:00Z",
        "needs_approval": True,
        "stages": [
            {"role": "demo/admin", "stage": "dba", "approvers": ["group:dba"], "min_approvals": 1}
        ],
    }
    assert api.get("alice", "/api/v1/requests").json() == {"items": []}
    assert not [r for r in api.audit() if r["action"].startswith("request.")]


def test_a_request_is_hidden_from_people_who_may_not_see_it(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)

    assert_problem(api.get("carol", f"/api/v1/requests/{request['id']}"), 404, "not-found")
    assert api.get("carol", "/api/v1/requests").json() == {"items": []}
    assert api.get("erin", f"/api/v1/requests/{request['id']}").status_code == 200


# --- authentication ---------------------------------------------------------------------------


def test_a_missing_token_is_a_401_problem(api: Api) -> None:
    response = api.client.get("/api/v1/requests")

    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_unknown_token_is_a_401_problem(api: Api) -> None:
    for token in ("jit_nobody-has-this-token", "not-even-ours"):
        response = api.client.get("/api/v1/grants", headers={"Authorization": f"Bearer {token}"})
        body = assert_problem(response, 401, "unauthenticated")
        assert token not in response.text
        assert "rule" not in body


# --- grants -----------------------------------------------------------------------------------


def test_credentials_are_fetched_once_and_only_by_the_grantee(api: Api) -> None:
    grant_id = active_read_grant(api)

    assert_problem(api.get("bob", f"/api/v1/grants/{grant_id}/credentials"), 404, "not-found")
    first = api.get("alice", f"/api/v1/grants/{grant_id}/credentials")
    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "no-store"
    assert first.json()["username"] == "alice@demo/read"
    assert first.json()["token"]
    second = api.get("alice", f"/api/v1/grants/{grant_id}/credentials")
    assert assert_problem(second, 409, "conflict")["rule"] == "credentials-once"


def test_credentials_are_refused_until_the_grant_is_active(api: Api) -> None:
    request = api.ask("alice", {"roles": ["demo/read"]})

    response = api.get("alice", f"/api/v1/grants/{request['grants'][0]}/credentials")

    assert_problem(response, 409, "conflict")


def test_an_admin_revokes_a_grant_with_a_reason(api: Api) -> None:
    grant_id = active_read_grant(api)

    response = api.post("sec", f"/api/v1/grants/{grant_id}/revoke", {"reason": "left the team"})

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "revoking"
    api.clock.advance(timedelta(seconds=1))
    assert api.work().ended == 1
    grant = api.grant("alice", grant_id)
    assert grant["state"] == "revoked"
    assert grant["end_reason"] == "revoked"
    assert grant["ended_by"] == "sec"
    assert grant["ended_at"] == "2026-01-05T09:00:01Z"
    assert api.get("alice", "/api/v1/check", role="demo/read").json()["active"] is False
    revoked = [r for r in api.audit() if r["action"] == "grant.revoked"]
    assert [(r["subject"], r["comment"]) for r in revoked] == [(grant_id, "left the team")]


def test_revoke_accepts_comment_as_the_reason(api: Api) -> None:
    grant_id = active_read_grant(api)

    response = api.post("sec", f"/api/v1/grants/{grant_id}/revoke", {"comment": "incident"})

    assert response.status_code == 200, response.text
    assert response.json()["end_comment"] == "incident"


def test_only_an_admin_revokes_and_always_with_a_reason(api: Api) -> None:
    grant_id = active_read_grant(api)

    not_admin = api.post("bob", f"/api/v1/grants/{grant_id}/revoke", {"reason": "because"})
    no_reason = api.post("sec", f"/api/v1/grants/{grant_id}/revoke", {"reason": " "})
    missing = api.post("sec", f"/api/v1/grants/{grant_id}/revoke", {})

    assert assert_problem(not_admin, 403, "forbidden")["rule"] == "not-an-admin"
    assert_problem(no_reason, 422, "invalid-input")
    assert assert_problem(missing, 422, "invalid-input")["field"] == "body.reason"
    assert api.grant("alice", grant_id)["state"] == "active"


def test_the_grantee_deactivates_a_grant(api: Api) -> None:
    grant_id = active_read_grant(api)
    assert_problem(api.post("bob", f"/api/v1/grants/{grant_id}/deactivate"), 403, "forbidden")

    response = api.post("alice", f"/api/v1/grants/{grant_id}/deactivate", {"comment": "done"})

    assert response.status_code == 200, response.text
    api.work()
    grant = api.grant("alice", grant_id)
    assert grant["state"] == "deactivated"
    assert grant["ended_at"] is not None
    again = api.post("alice", f"/api/v1/grants/{grant_id}/deactivate")
    assert_problem(again, 409, "conflict")


def test_the_grantee_extends_a_grant_without_approval(api: Api) -> None:
    grant_id = active_read_grant(api)

    response = api.post("alice", f"/api/v1/grants/{grant_id}/extend", {"duration": "PT30M"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pending_approval"] is False
    assert body["grant"]["ends_at"] == "2026-01-05T10:00:00Z"
    assert body["request"]["extends_grant_id"] == grant_id
    too_long = api.post("alice", f"/api/v1/grants/{grant_id}/extend", {"duration": "2h"})
    assert assert_problem(too_long, 422, "policy-violation")["rule"] == (
        "roles.demo/read.duration.max"
    )


def test_extending_a_role_with_approval_waits_for_it(api: Api) -> None:
    grant_id = approved_admin_grant(api)
    api.work()

    response = api.post(
        "alice",
        f"/api/v1/grants/{grant_id}/extend",
        {"duration": "30m", "justification": "not done", "ticket": "INC-42"},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pending_approval"] is True
    assert body["request"]["state"] == "pending"
    assert body["grant"]["ends_at"] == "2026-01-05T10:00:00Z"


def test_grants_list_filters_by_state_and_shows_each_their_own(api: Api) -> None:
    grant_id = active_read_grant(api)
    api.ask("alice", ADMIN_ASK)  # pending: no grant yet

    active = api.get("alice", "/api/v1/grants", state="active").json()["items"]
    assert [g["id"] for g in active] == [grant_id]
    assert api.get("bob", "/api/v1/grants").json() == {"items": []}
    assert len(api.get("erin", "/api/v1/grants").json()["items"]) == 1
    assert_problem(api.get("alice", "/api/v1/grants", state="nonsense"), 422, "invalid-input")


def test_checking_someone_else_needs_an_admin_or_auditor(api: Api) -> None:
    grant_id = active_read_grant(api)

    refused = api.get("bob", "/api/v1/check", principal="alice", role="demo/read")
    allowed = api.get("erin", "/api/v1/check", principal="alice", role="demo/read")

    assert_problem(refused, 403, "forbidden")
    assert allowed.json()["grants"] == [grant_id]
    own = api.get("bob", "/api/v1/check", principal="bob", role="demo/read")
    assert own.json()["active"] is False


# --- audit and policy -------------------------------------------------------------------------


def test_the_audit_log_is_for_admins_and_auditors(api: Api) -> None:
    api.ask("alice", {"roles": ["demo/read"]})

    assert_problem(api.get("alice", "/api/v1/audit"), 403, "forbidden")
    for reader in ("erin", "sec"):
        response = api.get(reader, "/api/v1/audit", after=0, limit=1000)
        assert response.status_code == 200
        items = response.json()["items"]
        assert [r["seq"] for r in items] == list(range(1, len(items) + 1))
        assert "request.created" in {r["action"] for r in items}
    page = api.get("erin", "/api/v1/audit", after=2, limit=1).json()["items"]
    assert [r["seq"] for r in page] == [3]
    newest = api.get("erin", "/api/v1/audit", tail=2).json()["items"]
    assert [r["seq"] for r in newest] == [len(items) - 1, len(items)]


def test_audit_verify_reports_an_intact_chain(api: Api) -> None:
    api.ask("alice", {"roles": ["demo/read"]})

    response = api.get("erin", "/api/v1/audit/verify")

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["records"] == len(api.audit())
    assert body["first_bad_seq"] is None
    assert_problem(api.get("bob", "/api/v1/audit/verify"), 403, "forbidden")


def test_anyone_authenticated_reads_the_policy(api: Api) -> None:
    response = api.get("carol", "/api/v1/policy")

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 1
    assert len(body["digest"]) == 64
    assert body["applied_by"].startswith("host:")
    assert set(body["document"]["roles"]) == {"demo/read", "demo/admin"}


def test_a_bad_policy_is_refused_with_lines_and_nothing_changes(api: Api) -> None:
    response = api.client.put(
        "/api/v1/policy",
        content=BAD_POLICY,
        headers={**api.auth("sec"), "Content-Type": "application/yaml"},
    )

    body = assert_problem(response, 422, "policy-invalid")
    assert body["problems"], body
    for found in body["problems"]:
        assert set(found) == {"file", "line", "key", "reason"}
        assert found["file"] == "policy.yaml"
    assert BAD_LINE in {p["line"] for p in body["problems"]}
    assert api.policy_version() == 1


def test_a_yaml_syntax_error_names_its_line(api: Api) -> None:
    response = api.client.put(
        "/api/v1/policy",
        content="users:\n  alice: {groups: [a\nroles: {}\n",
        headers={**api.auth("sec"), "Content-Type": "text/plain"},
    )

    body = assert_problem(response, 422, "policy-invalid")
    assert all(p["line"] >= 1 for p in body["problems"])
    assert api.policy_version() == 1


def test_only_an_admin_changes_the_policy(api: Api) -> None:
    changed = POLICY.replace("max: 2h", "max: 3h")

    response = api.client.put(
        "/api/v1/policy",
        content=changed,
        headers={**api.auth("alice"), "Content-Type": "application/yaml"},
    )

    assert assert_problem(response, 403, "forbidden")["rule"] == "not-an-admin"
    assert api.policy_version() == 1
    refused = [r for r in api.audit() if r["action"] == "policy.apply"]
    assert [(r["actor"], r["outcome"]) for r in refused] == [("alice", "refused")]


def test_an_admin_applies_a_new_policy_version(api: Api) -> None:
    changed = POLICY.replace("max: 2h", "max: 3h")

    applied = api.client.put("/api/v1/policy", json={"yaml": changed}, headers=api.auth("sec"))
    same = api.client.put(
        "/api/v1/policy",
        content=changed,
        headers={**api.auth("sec"), "Content-Type": "application/yaml"},
    )

    assert applied.status_code == 200, applied.text
    assert applied.json() == {"version": 2, "changed": True}
    assert same.json() == {"version": 2, "changed": False}
    assert api.ask("alice", {"roles": ["demo/read"], "duration": "3h"})["policy_version"] == 2


def test_a_policy_body_of_the_wrong_kind_is_refused(api: Api) -> None:
    wrong_json = api.client.put("/api/v1/policy", json={"yml": POLICY}, headers=api.auth("sec"))
    wrong_type = api.client.put(
        "/api/v1/policy",
        content=b"\x00",
        headers={**api.auth("sec"), "Content-Type": "application/octet-stream"},
    )

    assert assert_problem(wrong_json, 422, "invalid-input")["field"] == "body.yaml"
    assert assert_problem(wrong_type, 422, "invalid-input")["field"] == "content-type"


# --- documents and operations -----------------------------------------------------------------


def test_the_openapi_document_lists_the_routes(api: Api) -> None:
    document = api.client.get("/openapi.json").json()

    assert document["info"]["title"] == "jitaccess"
    paths = document["paths"]
    for path, method in [
        ("/api/v1/requests", "post"),
        ("/api/v1/requests", "get"),
        ("/api/v1/requests/{request_id}", "get"),
        ("/api/v1/requests/{request_id}/approve", "post"),
        ("/api/v1/requests/{request_id}/deny", "post"),
        ("/api/v1/requests/{request_id}/cancel", "post"),
        ("/api/v1/grants", "get"),
        ("/api/v1/grants/{grant_id}", "get"),
        ("/api/v1/grants/{grant_id}/credentials", "get"),
        ("/api/v1/grants/{grant_id}/extend", "post"),
        ("/api/v1/grants/{grant_id}/deactivate", "post"),
        ("/api/v1/grants/{grant_id}/revoke", "post"),
        ("/api/v1/check", "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/audit/verify", "get"),
        ("/api/v1/policy", "get"),
        ("/api/v1/policy", "put"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths.get(path, {}), (method, path)
    assert {"Problem", "PolicyDocument"} <= set(document["components"]["schemas"])
    assert "HTTPBearer" in document["components"]["securitySchemes"]


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_not_ready_without_a_policy(tmp_path: Path) -> None:
    container = make_container(tmp_path)
    upgrade(container)
    with TestClient(create_app(container)) as client:
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    container.close()

    assert_problem(response, 503, "unavailable")


def test_an_unreachable_database_is_a_503_problem_without_internals(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "jit.db"
    container = make_container(tmp_path, f"sqlite:///{missing}")
    with TestClient(create_app(container)) as client:
        ready = client.get("/readyz")
        api_call = client.get("/api/v1/grants", headers={"Authorization": "Bearer jit_x"})
        alive = client.get("/healthz")
    container.close()

    assert alive.status_code == 200
    for response in (ready, api_call):
        body = assert_problem(response, 503, "unavailable")
        assert "database unavailable" in body["detail"]
        assert "no-such-dir" not in response.text
        assert "Traceback" not in response.text


def test_metrics_count_requests_grants_and_http_traffic(api: Api) -> None:
    api.ask("alice", {"roles": ["demo/read"]})
    api.ask("alice", ADMIN_ASK)
    api.post("carol", "/api/v1/requests", {"roles": ["demo/read"]})
    api.work()

    response = api.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'jitaccess_requests_total{outcome="approved"} 1.0' in text
    assert 'jitaccess_requests_total{outcome="pending"} 1.0' in text
    assert 'jitaccess_requests_total{outcome="refused"} 1.0' in text
    assert 'jitaccess_grants{state="active"} 1.0' in text
    assert 'jitaccess_grants{state="revoked"} 0.0' in text
    assert (
        'jitaccess_http_requests_total{method="POST",route="/api/v1/requests",status="201"} 2.0'
        in text
    )
    assert "jitaccess_http_request_seconds_bucket" in text


def test_many_apps_in_one_process_keep_their_own_metrics(api: Api) -> None:
    other = create_app(api.container)
    with TestClient(other) as client:
        assert client.get("/metrics").status_code == 200
    assert api.client.get("/metrics").status_code == 200


def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    missing = api.client.get("/api/v1/nothing-here")
    wrong_method = api.client.delete("/api/v1/requests", headers=api.auth("alice"))

    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith(PROBLEM)
    assert missing.json()["type"] == "about:blank"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"].startswith(PROBLEM)


def test_an_unexpected_error_is_a_500_problem_without_internals(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jitaccess.entrypoints.api import routes_grants

    def explode(*_: object, **__: object) -> None:
        raise RuntimeError("secret internals at /srv/jit")

    monkeypatch.setattr(routes_grants, "list_grants", explode)

    response = api.get("alice", "/api/v1/grants")

    body = assert_problem(response, 500, "internal-error")
    assert "secret" not in response.text
    assert "RuntimeError" not in body["detail"]


def test_tokens_and_credentials_never_reach_the_log(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    grant_id = active_read_grant(api)

    credentials = api.get("alice", f"/api/v1/grants/{grant_id}/credentials").json()
    api.client.get("/api/v1/grants", headers={"Authorization": "Bearer jit_wrong-secret"})

    assert credentials["token"] not in caplog.text
    assert api.tokens["alice"] not in caplog.text
    assert "jit_wrong-secret" not in caplog.text


def test_credentials_of_a_revoked_grant_are_never_handed_out(api: Api) -> None:
    grant_id = active_read_grant(api)
    revoked = api.post("sec", f"/api/v1/grants/{grant_id}/revoke", {"reason": "left the team"})
    assert revoked.status_code == 200, revoked.text

    while_revoking = api.get("alice", f"/api/v1/grants/{grant_id}/credentials")
    api.work()
    after_end = api.get("alice", f"/api/v1/grants/{grant_id}/credentials")

    assert assert_problem(while_revoking, 409, "conflict")["rule"] == "grant-not-active"
    assert assert_problem(after_end, 409, "conflict")["rule"] == "grant-not-active"
    with api.container.engine.connect() as conn:
        sealed = conn.execute(
            text("SELECT credentials FROM grants WHERE id = :id"), {"id": grant_id}
        ).scalar_one()
    assert sealed is None  # erased when the grant ended


def test_the_first_policy_cannot_be_applied_through_the_api(tmp_path: Path) -> None:
    container = make_container(tmp_path)
    upgrade(container)
    with container.uow() as uow:
        _, secret = create_token(uow, container.clock, principal="carol", created_by="test")
    with TestClient(create_app(container)) as client:
        response = client.put(
            "/api/v1/policy", json={"yaml": POLICY}, headers={"Authorization": f"Bearer {secret}"}
        )
    assert_problem(response, 403, "forbidden")
    with container.uow.readonly() as uow:
        assert uow.policies.current() is None
    container.close()


def test_a_grant_whose_target_keeps_failing_is_flagged_and_then_recovers(api: Api) -> None:
    grant_id = active_read_grant(api)
    target = api.container.current_policy().targets["demo"]
    fake = api.container.connectors.for_target(target)
    assert isinstance(fake, FakeConnector)
    fake.failing = True
    api.clock.advance(timedelta(minutes=31))  # past the end: the revoke starts failing
    for _ in range(12):
        api.work()
        api.clock.advance(timedelta(minutes=1))
    flagged = api.grant("alice", grant_id)
    assert flagged["state"] == "revoking"  # never "ended" while the access may remain
    assert flagged["flagged"] is True and "fake target is down" in flagged["last_error"]
    assert [r["action"] for r in api.audit()].count("grant.flagged") == 1
    fake.failing = False
    api.clock.advance(timedelta(minutes=2))
    api.work()
    recovered = api.grant("alice", grant_id)
    assert recovered["state"] == "expired" and recovered["flagged"] is False
    assert not fake.has("alice", "demo/read")
