"""The REST API for grants: credentials handed out once, revoke, deactivate, extend, listing,
and a target that keeps failing. The worker is driven by hand with a fake clock."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from jitaccess.adapters.connectors.fake import FakeConnector
from support.api import ADMIN_ASK, Api, active_read_grant, approved_admin_grant, assert_problem


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
