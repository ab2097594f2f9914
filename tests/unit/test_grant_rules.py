"""The rules for grants (PRODUCT.md): a scheduled start, extending, deactivating and revoking,
credentials handed out once, the access check, and the audit trail of a full lifecycle; one test
per rule, on a fake clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jitaccess.audit.chain import verify
from jitaccess.domain.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PolicyViolation,
    SelfApproval,
)
from jitaccess.domain.model import Decision, EndReason, GrantState, RequestState
from jitaccess.domain.policy import OnExtend
from jitaccess.services.check_access import check_access
from jitaccess.services.fetch_credentials import fetch_credentials
from support.lifecycle import Harness, active_read_grant, fake, records, sample_policy


def approved_admin_grant(h: Harness, who: str = "alice") -> str:
    request = h.request(who, "demo/admin")
    h.decide("carol", request.id)
    h.work()
    (grant,) = h.grants_of(request)
    assert grant.state is GrantState.ACTIVE
    return grant.id


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
