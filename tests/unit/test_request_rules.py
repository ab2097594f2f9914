"""The rules for requests (PRODUCT.md): eligibility, durations and requirements, approvals,
cancelling and the pending TTL; one test per rule, on a fake clock."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest

from jitaccess.audit.chain import verify
from jitaccess.domain.errors import Conflict, Forbidden, NotEligible, PolicyViolation, SelfApproval
from jitaccess.domain.model import Decision, RequestState
from jitaccess.domain.policy import Policy, Requirements, Stage
from support.lifecycle import Harness, group, records, sample_policy, user

DBA = (group("dba"), user("carol"))


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
    assert refused.value.rule == "mfa-required"
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
