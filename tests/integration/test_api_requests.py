"""The REST API for requests: asking, approving, denying, cancelling, dry runs and who may see
a request, with refusals as problem+json naming the rule or field. On SQLite and PostgreSQL."""

from __future__ import annotations

from support.api import ADMIN_ASK, Api, assert_problem


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
        "outcome": "pending",
        "roles": ["demo/admin"],
        "duration": "1h",
        "duration_seconds": 3600,
        "starts_at": "2026-01-05T09:00:00Z",
        "needs_approval": True,
        "mfa_required": False,
        "auto_approved": {},
        "break_glass": False,
        "stages": [
            {
                "role": "demo/admin",
                "stage": "dba",
                "approvers": ["group:dba"],
                "people": ["bob"],
                "min_approvals": 1,
                "all_groups": False,
                "escalate_after": None,
                "escalate_to": [],
                "mfa": False,
            }
        ],
    }
    assert api.get("alice", "/api/v1/requests").json() == {"items": []}
    assert not [r for r in api.audit() if r["action"].startswith("request.")]


def test_a_request_is_hidden_from_people_who_may_not_see_it(api: Api) -> None:
    request = api.ask("alice", ADMIN_ASK)

    assert_problem(api.get("carol", f"/api/v1/requests/{request['id']}"), 404, "not-found")
    assert api.get("carol", "/api/v1/requests").json() == {"items": []}
    assert api.get("erin", f"/api/v1/requests/{request['id']}").status_code == 200
