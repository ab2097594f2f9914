"""A Hypothesis state machine over the whole lifecycle: any sequence of requests, decisions,
cancels, early ends, extensions, target outages and clock moves keeps the rules of PRODUCT.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.audit.chain import verify
from jitaccess.domain.errors import JitAccessError
from jitaccess.domain.model import (
    ENDED_GRANT_STATES,
    Decision,
    EndReason,
    Grant,
    GrantState,
    Request,
    RequestState,
    StageMark,
)
from jitaccess.domain.policy import OnExtend, Stage
from support.lifecycle import Harness, group, sample_policy, user

USERS = ("alice", "bob", "dan", "carol", "mallory", "sam")
REQUESTERS = ("alice", "bob", "mallory", "carol")
ROLES = ("demo/read", "demo/admin")

# The order grant states follow; a grant never moves back.
STEP = {
    GrantState.SCHEDULED: 0,
    GrantState.ACTIVATING: 1,
    GrantState.ACTIVE: 2,
    GrantState.REVOKING: 3,
    GrantState.EXPIRED: 4,
    GrantState.REVOKED: 4,
    GrantState.DEACTIVATED: 4,
}

# An index into the known requests or grants, and whether to prefer the open ones (pending
# requests, live grants) so that decisions and early ends mostly land on something they can change.
Pick = tuple[int, bool]
picks = st.tuples(st.integers(min_value=0, max_value=10_000), st.booleans())
minutes = st.one_of(
    st.sampled_from([timedelta(minutes=m) for m in (5, 30, 60, 120, 240)]),
    st.integers(min_value=1, max_value=300).map(lambda m: timedelta(minutes=m)),
)
actors = st.one_of(st.none(), st.sampled_from(USERS))  # None: the grantee or requester
approvers = st.one_of(st.sampled_from(("bob", "dan", "carol")), st.sampled_from(USERS))


def waiting_for_retry(grant: Grant, now: datetime) -> bool:
    """A failed provision or revoke waits out its backoff; until then its access may linger."""
    return (
        grant.state in (GrantState.ACTIVATING, GrantState.REVOKING)
        and grant.next_attempt_at is not None
        and grant.next_attempt_at > now
    )


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.request_states: dict[str, RequestState] = {}
        self.grant_states: dict[str, GrantState] = {}
        self.healthy_pass_at: datetime | None = None

    @initialize(
        quorum=st.integers(min_value=1, max_value=2),
        deny_threshold=st.integers(min_value=1, max_value=2),
        on_extend=st.sampled_from(OnExtend),
        pending_ttl=st.sampled_from([timedelta(hours=1), timedelta(hours=24)]),
    )
    def choose_policy(
        self, quorum: int, deny_threshold: int, on_extend: OnExtend, pending_ttl: timedelta
    ) -> None:
        stage = Stage(
            "dba",
            (group("dba"), user("carol")),
            min_approvals=quorum,
            deny_threshold=deny_threshold,
        )
        self.h = Harness(
            policy=sample_policy(stages=(stage,), on_extend=on_extend, pending_ttl=pending_ttl)
        )

    @initialize(
        opening=st.lists(
            st.tuples(
                st.sampled_from(("alice", "bob")),
                st.lists(st.sampled_from(ROLES), min_size=1, max_size=2, unique=True),
                st.sampled_from([timedelta(minutes=m) for m in (10, 30, 60, 90)]),
            ),
            max_size=4,
        ),
        then_work=st.booleans(),
    )
    def open_with_approved_grants(
        self, opening: list[tuple[str, list[str], timedelta]], then_work: bool
    ) -> None:
        """Every run starts with some approved grants, whatever rules swarm testing enables."""
        for who, roles, duration in opening:
            request = self.h.request(who, *roles, duration=duration)
            for approver in ("carol", "dan"):
                if self.h.store.requests[request.id].state is RequestState.PENDING:
                    self.h.decide(approver, request.id)
        if then_work:
            self.work()

    # --- helpers ------------------------------------------------------------------------------
    @property
    def fake(self) -> FakeConnector:
        return self.h.connectors.for_target(self.h.policy.targets["demo"])

    def pick_request(self, pick: Pick) -> Request:
        index, open_only = pick
        requests = list(self.h.store.requests.values())
        pending = [r for r in requests if r.state is RequestState.PENDING]
        choices = pending if open_only and pending else requests
        return choices[index % len(choices)]

    def pick_grant(self, pick: Pick) -> Grant:
        index, open_only = pick
        grants = list(self.h.store.grants.values())
        live = [g for g in grants if g.is_live]
        choices = live if open_only and live else grants
        return choices[index % len(choices)]

    def attempt(self, action: Callable[[], object], then_work: bool) -> None:
        with contextlib.suppress(JitAccessError):
            action()  # a refused action is part of the game; the invariants must still hold
        if then_work:  # as the real worker does when a commit wakes it
            self.work()

    def work(self) -> None:
        healthy = not self.fake.failing
        self.h.work()
        self.healthy_pass_at = self.h.clock.now() if healthy else None

    def has_requests(self) -> bool:
        return bool(self.h.store.requests)

    def has_grants(self) -> bool:
        return bool(self.h.store.grants)

    # --- rules --------------------------------------------------------------------------------
    # Each action may be followed by a worker pass at the same instant (`then_work`), as the
    # real worker runs when a commit wakes it.
    @rule(
        who=st.one_of(st.sampled_from(("alice", "bob")), st.sampled_from(REQUESTERS)),
        roles=st.lists(st.sampled_from(ROLES), min_size=1, max_size=2, unique=True),
        duration=st.one_of(st.none(), minutes),
        start_in=st.one_of(st.none(), minutes),
        then_work=st.booleans(),
    )
    def request(
        self,
        who: str,
        roles: list[str],
        duration: timedelta | None,
        start_in: timedelta | None,
        then_work: bool,
    ) -> None:
        self.attempt(
            lambda: self.h.request(who, *roles, duration=duration, start_in=start_in), then_work
        )

    @precondition(has_requests)
    @rule(who=approvers, pick=picks, decision=st.sampled_from(Decision), then_work=st.booleans())
    def decide(self, who: str, pick: Pick, decision: Decision, then_work: bool) -> None:
        request = self.pick_request(pick)
        self.attempt(lambda: self.h.decide(who, request.id, decision), then_work)

    @precondition(has_requests)
    @rule(who=actors, pick=picks, then_work=st.booleans())
    def cancel(self, who: str | None, pick: Pick, then_work: bool) -> None:
        request = self.pick_request(pick)
        self.attempt(lambda: self.h.cancel(who or request.requester, request.id), then_work)

    @precondition(has_grants)
    @rule(who=actors, pick=picks, then_work=st.booleans())
    def deactivate(self, who: str | None, pick: Pick, then_work: bool) -> None:
        grant = self.pick_grant(pick)
        self.attempt(
            lambda: self.h.end(who or grant.principal, grant.id, EndReason.DEACTIVATED), then_work
        )

    @precondition(has_grants)
    @rule(
        who=st.sampled_from(("sam", "sam", "alice", "bob")),
        pick=picks,
        reason=st.booleans(),
        then_work=st.booleans(),
    )
    def revoke(self, who: str, pick: Pick, reason: bool, then_work: bool) -> None:
        grant = self.pick_grant(pick)
        comment = "leaver" if reason else ""
        self.attempt(
            lambda: self.h.end(who, grant.id, EndReason.REVOKED, comment=comment), then_work
        )

    @precondition(has_grants)
    @rule(who=actors, pick=picks, by=minutes, then_work=st.booleans())
    def extend(self, who: str | None, pick: Pick, by: timedelta, then_work: bool) -> None:
        grant = self.pick_grant(pick)
        self.attempt(lambda: self.h.extend(who or grant.principal, grant.id, by), then_work)

    @rule()
    def toggle_target_failing(self) -> None:
        self.fake.failing = not self.fake.failing

    @rule(
        seconds=st.one_of(
            st.sampled_from([0, 1, 30, 60, 300, 3600]),
            st.integers(min_value=1, max_value=3 * 3600),
        )
    )
    def advance_and_work(self, seconds: int) -> None:
        self.h.clock.advance(timedelta(seconds=seconds))
        self.work()

    # --- invariants ---------------------------------------------------------------------------
    @invariant()
    def no_grant_without_every_required_approval(self) -> None:
        policy = self.h.policy
        for grant in self.h.store.grants.values():
            request = self.h.store.requests[grant.request_id]
            assert request.state is RequestState.APPROVED, (grant, request)
            assert grant.id in request.grant_ids
        for request in self.h.store.requests.values():
            if request.state is not RequestState.APPROVED:
                continue
            deciders = {a.approver for a in request.approvals}
            assert request.requester not in deciders, request
            for role_name in request.roles:
                approval = policy.roles[role_name].approval
                if approval is None:
                    continue
                if request.extends_grant_id and approval.on_extend is OnExtend.NOT_REQUIRED:
                    continue
                for index, stage in enumerate(approval.stages):
                    approvers = {
                        a.approver
                        for a in request.approvals
                        if a.decision is Decision.APPROVE
                        and StageMark(role_name, index) in a.counted_for
                    }
                    assert len(approvers) >= stage.min_approvals, request

    @invariant()
    def no_decision_counts_after_the_pending_ttl(self) -> None:
        for request in self.h.store.requests.values():
            if request.pending_until is None:
                continue
            for decision in request.approvals:
                assert decision.at < request.pending_until, request

    @invariant()
    def no_grant_longer_than_its_roles_max_or_than_what_was_approved(self) -> None:
        for grant in self.h.store.grants.values():
            length = grant.ends_at - grant.starts_at
            assert length <= self.h.policy.roles[grant.role].duration.max, grant
            approved = self.h.store.requests[grant.request_id].duration + sum(
                (
                    r.duration
                    for r in self.h.store.requests.values()
                    if r.extends_grant_id == grant.id and r.state is RequestState.APPROVED
                ),
                timedelta(),
            )
            assert length == approved, grant

    @invariant()
    def no_grant_for_an_ineligible_principal(self) -> None:
        for grant in self.h.store.grants.values():
            assert grant.principal not in ("mallory", "carol"), grant
            assert self.h.policy.is_eligible(grant.principal, grant.role, grant.created_at.date())

    @invariant()
    def decided_requests_and_ended_grants_never_change_state(self) -> None:
        for request in self.h.store.requests.values():
            before = self.request_states.get(request.id)
            if before is not None and before is not RequestState.PENDING:
                assert request.state is before, request
            self.request_states[request.id] = request.state
        for grant in self.h.store.grants.values():
            before_grant = self.grant_states.get(grant.id)
            if before_grant in ENDED_GRANT_STATES:
                assert grant.state is before_grant, grant
            if before_grant is not None:
                # Only forward along the lifecycle: active -> activating would mean the access
                # was taken away under a grant that still covered it.
                assert STEP[grant.state] >= STEP[before_grant], (before_grant, grant)
            self.grant_states[grant.id] = grant.state
        assert self.request_states.keys() == self.h.store.requests.keys()
        assert self.grant_states.keys() == self.h.store.grants.keys()

    @invariant()
    def ended_grants_have_an_end_time_and_live_ones_do_not(self) -> None:
        for grant in self.h.store.grants.values():
            if grant.state in ENDED_GRANT_STATES:
                assert grant.ended_at is not None, grant
                assert grant.end_reason is not None, grant
            else:
                assert grant.ended_at is None, grant

    @invariant()
    def target_holds_access_exactly_while_a_grant_explains_it(self) -> None:
        for access in self.fake.list_access():
            principal, _, role = access.account.partition("@")
            assert any(
                g.is_live and g.principal == principal and g.role == role
                for g in self.h.store.grants.values()
            ), f"leftover access {access.account}"
        for grant in self.h.store.grants.values():
            if grant.state is GrantState.ACTIVE:
                assert self.fake.has(grant.principal, grant.role), f"missing access for {grant}"

    @invariant()
    def no_active_grant_outlives_its_end_after_a_healthy_worker_pass(self) -> None:
        now = self.h.clock.now()
        if self.healthy_pass_at != now:
            return
        for grant in self.h.store.grants.values():
            if grant.state is GrantState.ACTIVE:
                assert grant.ends_at > now, grant
        for access in self.fake.list_access():
            principal, _, role = access.account.partition("@")
            assert any(
                g.is_live
                and g.principal == principal
                and g.role == role
                and (g.ends_at > now or waiting_for_retry(g, now))
                for g in self.h.store.grants.values()
            ), f"access {access.account} outlives every grant that explains it"

    @invariant()
    def audit_chain_verifies(self) -> None:
        verification = verify(self.h.store.audit)
        assert verification.ok, verification


def test_lifecycle_rules_hold_under_any_sequence_of_actions() -> None:
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None),
    )
