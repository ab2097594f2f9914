"""The REST API beyond requests and grants: authentication, the check endpoint, the audit trail,
policy, the OpenAPI document, health, readiness, metrics and errors as problem+json."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jitaccess.bootstrap import upgrade
from jitaccess.entrypoints.api import create_app
from jitaccess.services.manage_tokens import create_token
from support.api import (
    ADMIN_ASK,
    BAD_LINE,
    BAD_POLICY,
    POLICY,
    PROBLEM,
    Api,
    TestClient,
    active_read_grant,
    assert_problem,
    make_container,
)

# --- authentication and secrets ---------------------------------------------------------------


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


# --- check ------------------------------------------------------------------------------------


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


def test_an_admin_cannot_lock_every_admin_out_through_the_api(api: Api) -> None:
    orphaned = POLICY.replace("admins: [group:security]", "admins: []")
    response = api.client.put("/api/v1/policy", json={"yaml": orphaned}, headers=api.auth("sec"))
    assert assert_problem(response, 409, "conflict")["rule"] == "admin-lockout"
    assert api.policy_version() == 1


def test_a_policy_body_of_the_wrong_kind_is_refused(api: Api) -> None:
    wrong_json = api.client.put("/api/v1/policy", json={"yml": POLICY}, headers=api.auth("sec"))
    wrong_type = api.client.put(
        "/api/v1/policy",
        content=b"\x00",
        headers={**api.auth("sec"), "Content-Type": "application/octet-stream"},
    )

    assert assert_problem(wrong_json, 422, "invalid-input")["field"] == "body.yaml"
    assert assert_problem(wrong_type, 422, "invalid-input")["field"] == "content-type"


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
