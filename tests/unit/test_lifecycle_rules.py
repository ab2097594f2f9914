"""The rules of the request and grant lifecycle (PRODUCT.md), one test per rule, on a fake clock."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest

from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.audit.chain import verify
from jitaccess.domain.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotEligible,
    NotFound,
    PolicyViolation,
    SelfApproval,
)
from jitaccess.domain.model import Decision, EndReason, GrantState, RequestState
from jitaccess.domain.policy import OnExtend, Policy, Requirements, Stage
from jitaccess.ports import AuditRecord
from jitaccess.services.check_access import check_access
from jitaccess.services.fetch_credentials import fetch_credentials
from support.lifecycle import Harness, group, sample_policy, user

DBA = (group("dba"), user("carol"))


def fake(h: Harness) -> FakeConnector:
    return h.connectors.for_target(h.policy.targets["demo"])


def records(h: Harness, action: str, *, outcome: str = "ok") -> list[AuditRecord]:
    return [r for r in h.store.audit if r.entry.action == action and r.entry.outcome == outcome]


def active_read_grant(h: Harness, who: str = "alice") -> str:
    """Request demo/read (no approval), run the worker, and return the active grant's id."""
    request = h.request(who, "demo/read")
    h.work()
    (grant,) = h.grants_of(request)
    assert grant.state is GrantState.ACTIVE
    return grant.id


def approved_admin_grant(h: Harness, who: str = "alice") -> str:
    request = h.request(who, "demo/admin")
    h.decide("carol", request.id)
    h.work()
    (grant,) = h.grants_of(request)
    assert grant.state is GrantState.ACTIVE
    return grant.id


def with_requirements(policy: Policy, name: str, require: Requirements) -> Policy:
    role = dataclasses.replace(policy.roles[name], require=require)
    return dataclasses.replace(policy, roles={**policy.roles, name: role})


# --- eligibility ------------------------------------------------------------------------------


def test_ineligible_principal_is_refused_and_the_refusal_is_audited() -> None:
    h = Harness()
    with pytest.raises(NotEligible) as refused:
        h.request("mallory", "demo/read")
    assert refused.value.rule == "eligibility:demo/read"
    assert h.store.requests == {}
    (record,) = records(h, "request.create", outcome="refused")
    assert record.entry.actor == "mallory"
    assert record.entry.data["rule"] == "eligibility:demo/read"


def test_eligibility_that_ended_yesterday_refuses_the_request() -> None:
    base = sample_policy()
    (row,) = base.eligibility
    ended = dataclasses.replace(row, valid_until=date(2026, 1, 4))
    h = Harness(policy=dataclasses.replace(base, eligibility=(ended,)))
    with pytest.raises(NotEligible) as refused:
        h.request("alice", "demo/read")
    assert refused.value.rule == "eligibility:demo/read"
    assert h.store.grants == {}


# --- durations and requirements ---------------------------------------------------------------


def test_duration_above_the_roles_max_is_refused() -> None:
    h = Harness()
    with pytest.raises(PolicyViolation) as refused:
        h.request("alice", "demo/read", duration=timedelta(hours=2, seconds=1))
    assert refused.value.rule == "roles.demo/read.duration.max"
    assert h.store.requests == {}


def test_duration_below_the_roles_min_is_refused() -> None:
    h = Harness()
    with pytest.raises(PolicyViolation) as refused:
        h.request("alice", "demo/read", duration=timedelta(minutes=4))
    assert refused.value.rule == "roles.demo/read.duration.min"


def test_default_duration_is_used_when_none_is_asked() -> None:
    h = Harness()
    request = h.request("alice", "demo/read")
    assert request.duration == timedelta(hours=1)
    (grant,) = h.grants_of(request)
    assert grant.ends_at - grant.starts_at == timedelta(hours=1)


def test_missing_justification_is_refused_when_the_role_requires_one() -> None:
    h = Harness()
    with pytest.raises(PolicyViolation) as refused:
        h.request("alice", "demo/admin", justification="   ")
    assert refused.value.rule == "roles.demo/admin.require.justification"


@pytest.mark.parametrize("ticket", ["INC-1x", "xINC-1", "INC-", None])
def test_ticket_must_match_the_roles_pattern_in_full(ticket: str | None) -> None:
    h = Harness()
    with pytest.raises(PolicyViolation) as refused:
        h.request("alice", "demo/admin", ticket=ticket)
    assert refused.value.rule == "roles.demo/admin.require.ticket"
    assert h.store.requests == {}


def test_role_that_requires_mfa_is_refused_without_a_verified_second_factor() -> None:
    policy = with_requirements(sample_policy(), "demo/read", Requirements(mfa=True))
    h = Harness(policy=policy)
    with pytest.raises(PolicyViolation) as refused:
        h.request("alice", "demo/read")
    assert refused.value.rule == "roles.demo/read.require.mfa"
    assert h.store.grants == {}


# --- approvals --------------------------------------------------------------------------------


def test_pending_request_has_no_grant_until_approved() -> None:
    h = Harness()
    request = h.request("alice", "demo/admin")
    assert request.state is RequestState.PENDING
    h.work()
    assert h.grants_of(request) == []
    assert h.store.grants == {}
    approved = h.decide("carol", request.id)
    assert approved.state is RequestState.APPROVED
    (grant,) = h.grants_of(approved)
    assert grant.principal == "alice"
    assert grant.role == "demo/admin"


def test_quorum_of_two_needs_two_distinct_people() -> None:
    h = Harness(policy=sample_policy(stages=(Stage("dba", DBA, min_approvals=2),)))
    request = h.request("alice", "demo/admin")
    assert h.decide("bob", request.id).state is RequestState.PENDING
    assert h.grants_of(request) == []
    assert h.decide("dan", request.id).state is RequestState.APPROVED
    assert len(h.grants_of(request)) == 1


def test_second_approval_by_same_person_is_refused_with_conflict() -> None:
    h = Harness(policy=sample_policy(stages=(Stage("dba", DBA, min_approvals=2),)))
    request = h.request("alice", "demo/admin")
    h.decide("bob", request.id)
    with pytest.raises(Conflict):
        h.decide("bob", request.id)
    assert h.store.requests[request.id].state is RequestState.PENDING
    assert len(h.store.requests[request.id].approvals) == 1
    assert h.grants_of(request) == []


def test_requester_cannot_approve_own_request_even_as_an_approver() -> None:
    h = Harness()
    request = h.request("bob", "demo/admin")  # bob is in group dba, an approver of demo/admin
    with pytest.raises(SelfApproval) as refused:
        h.decide("bob", request.id)
    assert refused.value.rule == "self-approval"
    assert h.store.requests[request.id].state is RequestState.PENDING
    assert h.store.requests[request.id].approvals == []
    assert records(h, "request.approve", outcome="refused")


def test_non_approver_is_refused() -> None:
    h = Harness()
    request = h.request("alice", "demo/admin")
    with pytest.raises(Forbidden) as refused:
        h.decide("mallory", request.id)
    assert type(refused.value) is Forbidden
    assert refused.value.rule == "not-an-approver"
    assert h.store.requests[request.id].state is RequestState.PENDING


def _request_in_state(h: Harness, state: RequestState) -> str:
    request = h.request("alice", "demo/admin")
    if state is RequestState.APPROVED:
        h.decide("carol", request.id)
    elif state is RequestState.DENIED:
        h.decide("carol", request.id, Decision.DENY)
    elif state is RequestState.CANCELLED:
        h.cancel("alice", request.id)
    elif state is RequestState.EXPIRED:
        h.clock.advance(timedelta(hours=24))
        h.work()
    assert h.store.requests[request.id].state is state
    return request.id


@pytest.mark.parametrize(
    "state",
    [RequestState.APPROVED, RequestState.DENIED, RequestState.CANCELLED, RequestState.EXPIRED],
)
@pytest.mark.parametrize("decision", list(Decision))
def test_decision_on_a_request_that_is_no_longer_pending_is_refused(
    state: RequestState, decision: Decision
) -> None:
    h = Harness()
    request_id = _request_in_state(h, state)
    before = h.store.requests[request_id]
    grants_before = dict(h.store.grants)
    with pytest.raises(Conflict):
        h.decide("bob", request_id, decision)
    after = h.store.requests[request_id]
    assert after.state is state
    assert after.approvals == before.approvals
    assert after.decided_at == before.decided_at
    assert h.store.grants == grants_before
    (record,) = records(h, f"request.{decision.value}", outcome="refused")
    assert record.entry.actor == "bob"
    assert record.entry.subject == request_id
    assert verify(h.store.audit).ok


def test_denial_ends_the_request_without_grants() -> None:
    h = Harness()
    request = h.request("alice", "demo/admin")
    denied = h.decide("bob", request.id, Decision.DENY)
    assert denied.state is RequestState.DENIED
    assert h.store.grants == {}
    assert "request.denied" in h.audit_actions()


def test_deny_threshold_of_two_needs_two_denials() -> None:
    h = Harness(policy=sample_policy(stages=(Stage("dba", DBA, deny_threshold=2),)))
    request = h.request("alice", "demo/admin")
    assert h.decide("bob", request.id, Decision.DENY).state is RequestState.PENDING
    assert h.decide("dan", request.id, Decision.DENY).state is RequestState.DENIED
    assert h.store.grants == {}


# --- cancel and pending TTL -------------------------------------------------------------------


def test_requester_can_cancel_a_pending_request() -> None:
    h = Harness()
    request = h.request("alice", "demo/admin")
    assert h.cancel("alice", request.id).state is RequestState.CANCELLED
    assert "request.cancelled" in h.audit_actions()
    with pytest.raises(Conflict):
        h.decide("carol", request.id)
    assert h.store.grants == {}


def test_someone_else_cannot_cancel_a_request() -> None:
    h = Harness()
    request = h.request("alice", "demo/admin")
    with pytest.raises(Forbidden):
        h.cancel("bob", request.id)
    assert h.store.requests[request.id].state is RequestState.PENDING
    assert records(h, "request.cancel", outcome="refused")


def test_approved_request_cannot_be_cancelled() -> None:
    h = Harness()
    request = h.request("alice", "demo/read")
    with pytest.raises(Conflict):
        h.cancel("alice", request.id)
    assert h.store.requests[request.id].state is RequestState.APPROVED


def test_request_expires_after_its_pending_ttl_and_cannot_be_approved_then() -> None:
    h = Harness()
    request = h.request("alice", "demo/admin")
    h.clock.advance(timedelta(hours=23, minutes=59))
    h.work()
    assert h.store.requests[request.id].state is RequestState.PENDING
    h.clock.advance(timedelta(minutes=1))
    assert h.work().expired_requests == 1
    assert h.store.requests[request.id].state is RequestState.EXPIRED
    assert "request.expired" in h.audit_actions()
    with pytest.raises(Conflict):
        h.decide("carol", request.id)
    assert h.store.grants == {}


def test_approval_after_the_pending_ttl_is_refused_even_before_the_worker_ran() -> None:
    h = Harness()
    request = h.request("alice", "demo/admin")
    h.clock.advance(timedelta(hours=25))
    with pytest.raises(Conflict):
        h.decide("carol", request.id)
    assert h.store.requests[request.id].state is RequestState.EXPIRED
    assert h.store.requests[request.id].approvals == []
    assert h.store.grants == {}


# --- scheduled start --------------------------------------------------------------------------


def test_scheduled_grant_starts_only_at_its_start_time() -> None:
    h = Harness()
    start = h.clock.now() + timedelta(hours=2)
    request = h.request("alice", "demo/read", start_in=timedelta(hours=2))
    (grant,) = h.grants_of(request)
    assert grant.state is GrantState.SCHEDULED
    assert grant.starts_at == start
    assert grant.ends_at == start + timedelta(hours=1)
    h.clock.advance(timedelta(hours=1, minutes=59))
    h.work()
    assert h.grant(grant.id).state is GrantState.SCHEDULED
    assert not fake(h).has("alice", "demo/read")
    assert fake(h).calls == []
    h.clock.advance(timedelta(minutes=1))
    h.work()
    assert h.grant(grant.id).state is GrantState.ACTIVE
    assert fake(h).has("alice", "demo/read")
    assert "grant.scheduled" in h.audit_actions()


def test_max_duration_counts_from_the_grants_start_not_the_requests_creation() -> None:
    h = Harness()
    request = h.request(
        "alice", "demo/read", duration=timedelta(hours=2), start_in=timedelta(hours=3)
    )
    (grant,) = h.grants_of(request)
    assert grant.starts_at == request.created_at + timedelta(hours=3)
    assert grant.ends_at - grant.starts_at == timedelta(hours=2)


def test_approval_after_the_start_time_starts_then_and_lasts_the_full_duration() -> None:
    h = Harness()
    request = h.request(
        "alice", "demo/admin", duration=timedelta(hours=2), start_in=timedelta(hours=1)
    )
    h.clock.advance(timedelta(hours=3))
    approved_at = h.clock.now()
    h.decide("carol", request.id)
    (grant,) = h.grants_of(request)
    assert grant.starts_at == approved_at
    assert grant.ends_at == approved_at + timedelta(hours=2)
    h.work()
    assert h.grant(grant.id).state is GrantState.ACTIVE


# --- extend -----------------------------------------------------------------------------------


def test_extension_within_max_moves_the_end_at_once_for_a_role_without_approval() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    old_end = h.grant(grant_id).ends_at
    extension = h.extend("alice", grant_id, timedelta(minutes=30))
    assert extension.grant.ends_at == old_end + timedelta(minutes=30)
    assert h.grant(grant_id).ends_at == old_end + timedelta(minutes=30)
    assert fake(h).calls[-1] == ("extend", grant_id)
    assert "grant.extended" in h.audit_actions()


def test_extension_beyond_max_is_refused_naming_the_rule() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    old_end = h.grant(grant_id).ends_at
    with pytest.raises(PolicyViolation) as refused:
        h.extend("alice", grant_id, timedelta(hours=1, seconds=1))
    assert refused.value.rule == "roles.demo/read.duration.max"
    assert h.grant(grant_id).ends_at == old_end
    assert records(h, "grant.extend", outcome="refused")


def test_extension_of_a_role_that_requires_approval_waits_for_it() -> None:
    h = Harness()
    grant_id = approved_admin_grant(h)
    old_end = h.grant(grant_id).ends_at
    extension = h.extend("alice", grant_id, timedelta(hours=1))
    assert extension.request is not None
    assert extension.request.state is RequestState.PENDING
    assert extension.request.extends_grant_id == grant_id
    assert h.grant(grant_id).ends_at == old_end
    with pytest.raises(SelfApproval):
        h.decide("alice", extension.request.id)
    h.decide("bob", extension.request.id)
    assert h.grant(grant_id).ends_at == old_end + timedelta(hours=1)
    assert len(h.store.grants) == 1  # the extension made no new grant


def test_extension_is_applied_at_once_when_the_role_does_not_require_approval_on_extend() -> None:
    h = Harness(policy=sample_policy(on_extend=OnExtend.NOT_REQUIRED))
    grant_id = approved_admin_grant(h)
    old_end = h.grant(grant_id).ends_at
    extension = h.extend("alice", grant_id, timedelta(hours=1))
    assert extension.request is not None
    assert extension.request.state is RequestState.APPROVED
    assert h.grant(grant_id).ends_at == old_end + timedelta(hours=1)


def test_approving_the_extension_of_a_grant_that_ended_meanwhile_is_refused_and_audited() -> None:
    h = Harness()
    grant_id = approved_admin_grant(h)
    extension = h.extend("alice", grant_id, timedelta(hours=1))
    assert extension.request is not None
    h.end("alice", grant_id, EndReason.DEACTIVATED)
    h.work()
    ended = h.grant(grant_id)
    with pytest.raises(Conflict):
        h.decide("bob", extension.request.id)
    assert h.grant(grant_id) == ended
    refused = records(h, "request.approve", outcome="refused")
    assert [(r.entry.actor, r.entry.subject) for r in refused] == [("bob", extension.request.id)]
    assert verify(h.store.audit).ok


def test_extending_an_ended_grant_is_refused() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    h.clock.advance(timedelta(hours=1))
    h.work()
    assert h.grant(grant_id).state is GrantState.EXPIRED
    with pytest.raises(Conflict):
        h.extend("alice", grant_id, timedelta(minutes=10))
    assert h.grant(grant_id).state is GrantState.EXPIRED


def test_someone_else_cannot_extend_a_grant() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    with pytest.raises(Forbidden):
        h.extend("bob", grant_id, timedelta(minutes=10))


# --- deactivate and revoke --------------------------------------------------------------------


def test_grantee_deactivates_and_the_access_is_removed_by_the_worker() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    h.clock.advance(timedelta(minutes=10))
    ended = h.end("alice", grant_id, EndReason.DEACTIVATED)
    assert ended.state is GrantState.REVOKING
    assert h.grant(grant_id).ended_at is None
    h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.DEACTIVATED
    assert grant.ended_at == h.clock.now()
    assert not fake(h).has("alice", "demo/read")
    assert h.audit_actions()[-2:] == ["grant.deactivate", "grant.deactivated"]


def test_someone_else_cannot_deactivate_a_grant() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    with pytest.raises(Forbidden):
        h.end("bob", grant_id, EndReason.DEACTIVATED)
    assert h.grant(grant_id).state is GrantState.ACTIVE
    assert records(h, "grant.deactivate", outcome="refused")


def test_admin_revokes_a_grant_with_a_reason() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    h.end("sam", grant_id, EndReason.REVOKED, comment="suspicious activity")
    h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.REVOKED
    assert grant.ended_by == "sam"
    assert grant.end_comment == "suspicious activity"
    assert grant.ended_at is not None
    assert not fake(h).has("alice", "demo/read")
    (revoked,) = records(h, "grant.revoked")
    assert revoked.entry.actor == "sam"


def test_admin_revoke_without_a_reason_is_refused() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    with pytest.raises(InvalidInput) as refused:
        h.end("sam", grant_id, EndReason.REVOKED, comment="  ")
    assert refused.value.field == "reason"
    assert h.grant(grant_id).state is GrantState.ACTIVE


def test_non_admin_cannot_revoke() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    with pytest.raises(Forbidden) as refused:
        h.end("bob", grant_id, EndReason.REVOKED, comment="because")
    assert refused.value.rule == "not-an-admin"
    assert h.grant(grant_id).state is GrantState.ACTIVE


# --- expiry and reference counting ------------------------------------------------------------


def test_grant_expires_at_its_end_and_not_before() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    h.clock.advance(timedelta(minutes=59, seconds=59))
    report = h.work()
    assert report.ended == 0
    assert h.grant(grant_id).state is GrantState.ACTIVE
    assert fake(h).has("alice", "demo/read")
    h.clock.advance(timedelta(seconds=1))
    h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.EXPIRED
    assert grant.ended_at == grant.ends_at
    assert not fake(h).has("alice", "demo/read")
    (expired,) = records(h, "grant.expired")
    assert expired.entry.subject == grant_id


def test_grant_whose_end_passed_before_the_worker_ran_is_never_provisioned() -> None:
    h = Harness()
    request = h.request("alice", "demo/read", duration=timedelta(minutes=5))
    (grant,) = h.grants_of(request)
    h.clock.advance(timedelta(minutes=6))  # the worker was down the whole time
    h.work()
    assert ("provision", grant.id) not in fake(h).calls
    assert not fake(h).has("alice", "demo/read")
    with h.uow() as uow:
        check = check_access(uow, h.clock, principal="alice", role="demo/read")
    assert not check.active


def test_scheduled_grant_whose_window_passed_is_never_provisioned() -> None:
    h = Harness()
    request = h.request("alice", "demo/read", start_in=timedelta(hours=1))
    (grant,) = h.grants_of(request)
    h.clock.advance(timedelta(hours=3))
    h.work()
    assert ("provision", grant.id) not in fake(h).calls
    assert not fake(h).has("alice", "demo/read")
    h.work()
    assert h.grant(grant.id).state is GrantState.EXPIRED


def test_overlapping_grants_of_the_same_access_are_counted() -> None:
    h = Harness()
    first = active_read_grant(h)
    h.clock.advance(timedelta(minutes=30))
    second = active_read_grant(h)
    h.clock.advance(timedelta(minutes=30))
    h.work()
    assert h.grant(first).state is GrantState.EXPIRED
    assert h.grant(second).state is GrantState.ACTIVE
    assert fake(h).has("alice", "demo/read")
    (first_expired,) = records(h, "grant.expired")
    assert first_expired.entry.data["access_retained_by"] == [second]
    h.clock.advance(timedelta(minutes=30))
    h.work()
    assert h.grant(second).state is GrantState.EXPIRED
    assert not fake(h).has("alice", "demo/read")


def test_grant_is_marked_ended_only_after_the_target_confirmed() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    fake(h).failing = True
    h.clock.advance(timedelta(hours=1, seconds=1))
    h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.REVOKING
    assert grant.ended_at is None
    assert grant.attempts == 1
    assert grant.last_error is not None
    assert "fake target is down" in grant.last_error
    assert grant.flagged_at is None
    for _ in range(12):  # five minutes and more of retries
        h.clock.advance(timedelta(seconds=30))
        h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.REVOKING
    assert grant.attempts > 1
    assert grant.flagged_at is not None
    assert len(records(h, "grant.flagged")) == 1
    assert fake(h).has("alice", "demo/read")
    fake(h).failing = False
    h.clock.advance(timedelta(seconds=61))
    h.work()
    grant = h.grant(grant_id)
    assert grant.state is GrantState.EXPIRED
    assert grant.ended_at == h.clock.now()
    assert grant.flagged_at is None
    assert grant.attempts == 0
    assert not fake(h).has("alice", "demo/read")
    assert len(records(h, "grant.flagged")) == 1


def test_failed_provisioning_is_retried_with_growing_backoff_until_the_target_is_back() -> None:
    h = Harness()
    fake(h).failing = True
    request = h.request("alice", "demo/read")
    (grant,) = h.grants_of(request)
    delays = []
    for _ in range(4):
        h.work()
        grant = h.grant(grant.id)
        assert grant.state is GrantState.ACTIVATING
        assert grant.next_attempt_at is not None
        delays.append(grant.next_attempt_at - h.clock.now())
        h.clock.advance(delays[-1])
    assert delays == [timedelta(seconds=s) for s in (0.5, 1, 2, 4)]
    assert h.grant(grant.id).attempts == 4
    fake(h).failing = False
    h.work()
    grant = h.grant(grant.id)
    assert grant.state is GrantState.ACTIVE
    assert grant.attempts == 0
    assert grant.last_error is None
    assert fake(h).has("alice", "demo/read")


# --- credentials and check --------------------------------------------------------------------


def test_grantee_fetches_credentials_exactly_once() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    with h.uow() as uow:
        credentials = fetch_credentials(uow, h.clock, h.box, grant_id=grant_id, principal="alice")
    assert credentials["username"] == "alice@demo/read"
    assert credentials["token"]
    with h.uow() as uow, pytest.raises(Conflict):
        fetch_credentials(uow, h.clock, h.box, grant_id=grant_id, principal="alice")
    assert "grant.credentials_fetched" in h.audit_actions()


def test_another_principal_cannot_fetch_the_credentials() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    with h.uow() as uow, pytest.raises(NotFound):
        fetch_credentials(uow, h.clock, h.box, grant_id=grant_id, principal="bob")
    with h.uow() as uow:
        credentials = fetch_credentials(uow, h.clock, h.box, grant_id=grant_id, principal="alice")
    assert credentials["username"] == "alice@demo/read"


def test_check_access_reports_active_until_the_end_and_inactive_after() -> None:
    h = Harness()
    grant_id = active_read_grant(h)
    with h.uow() as uow:
        check = check_access(uow, h.clock, principal="alice", role="demo/read")
    assert check.active
    assert check.until == h.grant(grant_id).ends_at
    assert check.grant_ids == (grant_id,)
    with h.uow() as uow:
        other = check_access(uow, h.clock, principal="bob", role="demo/read")
    assert not other.active
    h.clock.advance(timedelta(hours=1))
    h.work()
    with h.uow() as uow:
        after = check_access(uow, h.clock, principal="alice", role="demo/read")
    assert not after.active
    assert after.until is None


# --- the audit trail of a full lifecycle ------------------------------------------------------


def test_full_lifecycle_leaves_a_verifiable_audit_trail_of_every_change() -> None:
    h = Harness()
    request = h.request("alice", "demo/admin", start_in=timedelta(minutes=10))
    h.decide("carol", request.id)
    (grant,) = h.grants_of(request)
    h.clock.advance(timedelta(minutes=10))
    h.work()
    extension = h.extend("alice", grant.id, timedelta(minutes=30))
    assert extension.request is not None
    h.decide("dan", extension.request.id)
    with h.uow() as uow:
        fetch_credentials(uow, h.clock, h.box, grant_id=grant.id, principal="alice")
    h.clock.advance(timedelta(minutes=20))
    h.end("alice", grant.id, EndReason.DEACTIVATED)
    h.work()
    denied = h.request("alice", "demo/admin")
    h.decide("bob", denied.id, Decision.DENY)
    cancelled = h.request("alice", "demo/admin")
    h.cancel("alice", cancelled.id)
    revoked_id = active_read_grant(h)
    h.end("sam", revoked_id, EndReason.REVOKED, comment="leaver")
    h.work()
    expired_id = active_read_grant(h)
    stale = h.request("alice", "demo/admin")
    h.clock.advance(timedelta(hours=24))
    h.work()

    assert h.grant(expired_id).state is GrantState.EXPIRED
    assert h.store.requests[stale.id].state is RequestState.EXPIRED
    assert h.audit_actions() == [
        "request.created",
        "request.approval",
        "request.approved",
        "grant.scheduled",
        "grant.provisioned",
        "request.created",
        "request.approval",
        "request.approved",
        "grant.extended",
        "grant.credentials_fetched",
        "grant.deactivate",
        "grant.deactivated",
        "request.created",
        "request.denial",
        "request.denied",
        "request.created",
        "request.cancelled",
        "request.created",
        "request.approved",
        "grant.created",
        "grant.provisioned",
        "grant.revoke",
        "grant.revoked",
        "request.created",
        "request.approved",
        "grant.created",
        "grant.provisioned",
        "request.created",
        "request.expired",
        "grant.expired",
    ]
    verification = verify(h.store.audit)
    assert verification.ok, verification.reason
    assert verification.records == len(h.store.audit)
