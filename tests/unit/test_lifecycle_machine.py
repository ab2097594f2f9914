"""A Hypothesis state machine over the whole lifecycle: any sequence of requests (single roles and
bundles, with and without `partial`, break-glass), decisions, cancels, early ends, extensions,
target outages and clock moves keeps the rules of PRODUCT.md.

The policy has roles with one, two and three serial stages (quorums, `all_groups`, deny
thresholds, escalation, separation of duties on and off), an auto-approval rule, a break-glass
role and a role with `max_active`. The invariants do not ask the approval engine what it thinks:
a small oracle in this file replays each request's recorded decisions against the policy and
works out, on its own, what every decision must have counted for and how the request must stand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
from jitaccess.audit.chain import GENESIS, chain_hash, verify
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
from jitaccess.domain.policy import (
    ApprovalPolicy,
    AutoApproveRule,
    BreakGlassPolicy,
    DurationPolicy,
    Eligibility,
    OnExtend,
    Policy,
    PrincipalRef,
    Role,
    Stage,
    User,
)
from jitaccess.ports import AuditRecord
from support.lifecycle import Harness, group, sample_policy, user

# --- the cast and the policy ------------------------------------------------------------------
# alice and olive (engineers; olive is on call) and bob (a dba who may break glass) may ask;
# everyone else only decides, administers or watches.
ELIGIBLE = ("alice", "bob", "olive")
USERS = ("alice", "bob", "dan", "carol", "mallory", "sam", "erin", "frank", "olive", "gina")
REQUESTERS = ("alice", "bob", "mallory", "carol", "olive")

READ, ADMIN, OPS, PROD = "demo/read", "demo/admin", "demo/ops", "demo/prod"
AUTO, GLASS, CAPPED = "demo/auto", "demo/glass", "demo/capped"
ROLES = (READ, ADMIN, OPS, PROD, AUTO, GLASS, CAPPED)
MAX_ACTIVE = 2
AUTO_MAX = timedelta(minutes=30)  # the auto-approval rule: on call, for at most this long

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


@dataclass(frozen=True)
class Knobs:
    """What each run draws about the policy."""

    quorum: int = 1  # demo/admin's one stage
    deny_threshold: int = 1
    on_extend: OnExtend = OnExtend.REQUIRED
    pending_ttl: timedelta = timedelta(hours=24)
    ops_quorum: int = 1  # demo/ops, stage 1 of 2
    ops_all_groups: bool = False
    ops_deny_threshold: int = 1
    prod_quorum: int = 1  # demo/prod, stage 2 of 3
    prod_deny_threshold: int = 2
    escalate_after: timedelta = timedelta(minutes=30)  # demo/prod stages 1 and 3, demo/ops 2
    capped_needs_approval: bool = False
    glass_cap: timedelta = timedelta(hours=1)


def build_policy(k: Knobs) -> Policy:
    base = sample_policy(
        stages=(
            Stage(
                "dba",
                (group("dba"), user("carol")),
                min_approvals=k.quorum,
                deny_threshold=k.deny_threshold,
            ),
        ),
        on_extend=k.on_extend,
        pending_ttl=k.pending_ttl,
    )

    def approval(
        *stages: Stage, distinct: bool = True, auto: tuple[AutoApproveRule, ...] = ()
    ) -> ApprovalPolicy:
        return ApprovalPolicy(stages, k.pending_ttl, k.on_extend, distinct, auto)

    def role(
        name: str,
        approval: ApprovalPolicy | None,
        *,
        max_active: int | None = None,
        break_glass: bool = False,
    ) -> Role:
        return Role(
            name,
            "demo",
            (("scope", name.partition("/")[2]),),
            DurationPolicy(timedelta(minutes=30), timedelta(hours=4)),
            approval=approval,
            max_active=max_active,
            break_glass=break_glass,
        )

    dba_stage = Stage("dba", (group("dba"),))
    roles = {
        **base.roles,
        OPS: role(
            OPS,
            approval(
                Stage(
                    "leads",
                    (group("leads"), group("dba")),
                    min_approvals=k.ops_quorum,
                    all_groups=k.ops_all_groups,
                    deny_threshold=k.ops_deny_threshold,
                ),
                Stage(
                    "security",
                    (group("security"),),
                    escalate_after=k.escalate_after,
                    escalate_to=(group("managers"),),
                ),
            ),
        ),
        PROD: role(
            PROD,
            approval(
                Stage(
                    "dba",
                    (group("dba"),),
                    escalate_after=k.escalate_after,
                    escalate_to=(user("carol"),),
                ),
                Stage(
                    "leads",
                    (group("leads"), user("frank")),
                    min_approvals=k.prod_quorum,
                    deny_threshold=k.prod_deny_threshold,
                ),
                Stage(
                    "security",
                    (group("security"),),
                    escalate_after=k.escalate_after,
                    escalate_to=(group("managers"),),
                ),
                distinct=False,
            ),
        ),
        AUTO: role(
            AUTO,
            approval(
                dba_stage,
                auto=(AutoApproveRule("oncall-short", groups=("oncall",), max_duration=AUTO_MAX),),
            ),
        ),
        GLASS: role(GLASS, approval(Stage("security", (group("security"),))), break_glass=True),
        CAPPED: role(
            CAPPED,
            approval(dba_stage) if k.capped_needs_approval else None,
            max_active=MAX_ACTIVE,
        ),
    }
    users = {
        **base.users,
        "bob": User("bob", groups=("dba",), break_glass=True),
        "erin": User("erin", groups=("leads", "security")),
        "frank": User("frank", groups=("dba", "security")),
        "olive": User("olive", groups=("engineers", "oncall")),
        "gina": User("gina", groups=("managers",)),  # only ever a backup approver
    }
    return replace(
        base,
        users=users,
        roles=roles,
        eligibility=(Eligibility((group("engineers"), user("bob")), ROLES),),
        break_glass=BreakGlassPolicy(max_duration=k.glass_cap, justification_min_length=10),
    )


# --- the oracle -------------------------------------------------------------------------------
def is_member(policy: Policy, person: str, ref: PrincipalRef) -> bool:
    found = policy.users.get(person)
    if found is None:
        return False
    return ref.name == person if ref.kind == "user" else ref.name in found.groups


def any_member(policy: Policy, person: str, refs: tuple[PrincipalRef, ...]) -> bool:
    return any(is_member(policy, person, ref) for ref in refs)


def quorum_met(policy: Policy, stage: Stage, people: set[str]) -> bool:
    """min_approvals distinct people and, with all_groups, one of each group the stage lists."""
    if len(people) < stage.min_approvals:
        return False
    return not stage.all_groups or all(
        any(is_member(policy, p, ref) for p in people)
        for ref in stage.approvers
        if ref.kind == "group"
    )


def auto_rule_holds(policy: Policy, request: Request, role: Role) -> bool:
    assert role.approval is not None
    for auto in role.approval.auto_approve:
        if auto.on_call is not None or auto.ticket is not None:
            continue  # this policy has no such rules
        in_group = not auto.groups or any(
            is_member(policy, request.requester, group(g)) for g in auto.groups
        )
        short = auto.max_duration is None or request.duration <= auto.max_duration
        if in_group and short:
            return True
    return False


@dataclass
class Tally:
    """One role of one request, as its recorded decisions leave it."""

    role: Role
    without_people: bool  # no approval configured, auto-approved, break-glass, free extension
    opened_at: datetime  # when the open stage opened
    open_index: int = 0  # == number of stages once every stage is complete
    approvers: list[set[str]] = field(default_factory=list)  # per stage, counted approvals
    deniers: list[set[str]] = field(default_factory=list)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return () if self.role.approval is None else self.role.approval.stages

    @property
    def denied(self) -> bool:
        return not self.without_people and any(
            len(d) >= s.deny_threshold for d, s in zip(self.deniers, self.stages, strict=True)
        )

    @property
    def approved(self) -> bool:
        return self.without_people or (not self.denied and self.open_index == len(self.stages))

    @property
    def is_open(self) -> bool:
        return not self.approved and not self.denied

    def may_count(self, policy: Policy, person: str, at: datetime) -> bool:
        """Whether `person` deciding at `at` must count for this role's open stage."""
        if not self.is_open:
            return False
        assert self.role.approval is not None
        stage = self.stages[self.open_index]
        escalated = stage.escalate_after is not None and at >= self.opened_at + (
            stage.escalate_after
        )
        if not any_member(policy, person, stage.approvers) and not (
            escalated and any_member(policy, person, stage.escalate_to)
        ):
            return False
        decided = [a | d for a, d in zip(self.approvers, self.deniers, strict=True)]
        if person in decided[self.open_index]:
            return False  # one decision per person per stage
        # Separation of duties: with it, nobody decides two stages of one role's approval.
        distinct = self.role.approval.distinct_stage_approvers
        return not (distinct and any(person in people for people in decided))

    def count(self, policy: Policy, person: str, decision: Decision, at: datetime) -> None:
        index = self.open_index
        if decision is Decision.DENY:
            self.deniers[index].add(person)
            return
        self.approvers[index].add(person)
        if quorum_met(policy, self.stages[index], self.approvers[index]):
            self.open_index += 1
            self.opened_at = at


def tally(policy: Policy, request: Request) -> dict[str, Tally]:
    """Replay the request's decisions in order; each must have counted for exactly the open
    stages whose approvers include the decider (backups once escalated), one decision per
    person per stage, and with distinct_stage_approvers none for a second stage of a role."""
    tallies: dict[str, Tally] = {}
    for name in request.roles:
        role = policy.roles[name]
        free_extension = (
            request.extends_grant_id is not None
            and role.approval is not None
            and role.approval.on_extend is OnExtend.NOT_REQUIRED
        )
        without = (
            role.approval is None
            or request.break_glass
            or name in request.auto_approved
            or free_extension
        )
        stages = len(role.approval.stages) if role.approval else 0
        tallies[name] = Tally(
            role,
            without,
            request.created_at,
            approvers=[set() for _ in range(stages)],
            deniers=[set() for _ in range(stages)],
        )
    decided: set[tuple[str, StageMark]] = set()
    for decision in request.approvals:
        who = decision.approver
        assert who != request.requester, f"{who} decided on their own request {request}"
        for mark in decision.counted_for:
            assert (who, mark) not in decided, f"{who} decided {mark} twice: {request}"
            decided.add((who, mark))
        expected = {
            StageMark(name, t.open_index)
            for name, t in tallies.items()
            if t.may_count(policy, who, decision.at)
        }
        assert expected, f"{who}'s decision counts for no open stage: {request}"
        assert set(decision.counted_for) == expected, (decision, expected, request)
        for mark in expected:
            tallies[mark.role].count(policy, who, decision.decision, decision.at)
    return tallies


def outcome(request: Request, tallies: dict[str, Tally]) -> RequestState | None:
    """What the decisions settle the request to; None while it must stay open."""
    if request.break_glass:
        return RequestState.APPROVED
    denied = [t.denied for t in tallies.values()]
    approved = [t.approved for t in tallies.values()]
    if request.partial:
        if all(denied):
            return RequestState.DENIED
        if all(a or d for a, d in zip(approved, denied, strict=True)) and any(approved):
            return RequestState.APPROVED
        return None
    if any(denied):
        return RequestState.DENIED
    return RequestState.APPROVED if all(approved) else None


# --- the machine ------------------------------------------------------------------------------
# An index into the known requests or grants, and whether to prefer the open ones (pending
# requests, live grants) so that decisions and early ends mostly land on something they can change.
Pick = tuple[int, bool]
picks = st.tuples(st.integers(min_value=0, max_value=10_000), st.booleans())
minutes = st.one_of(
    st.sampled_from([timedelta(minutes=m) for m in (5, 30, 60, 120, 240)]),
    st.integers(min_value=1, max_value=300).map(lambda m: timedelta(minutes=m)),
)
actors = st.one_of(st.none(), st.sampled_from(USERS))  # None: the grantee or requester
approvers = st.one_of(
    st.sampled_from(("bob", "dan", "carol", "erin", "frank")), st.sampled_from(USERS)
)
role_lists = st.lists(st.sampled_from(ROLES), min_size=1, max_size=3, unique=True)


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
        self.h = Harness(policy=build_policy(Knobs()))
        self.request_states: dict[str, RequestState] = {}
        self.grant_states: dict[str, GrantState] = {}
        self.healthy_pass_at: datetime | None = None
        self.audit_checked: list[AuditRecord] = []

    # One initializer: Hypothesis runs several in any order, and a policy chosen after the
    # opening grants would throw them away.
    @initialize(
        knobs=st.builds(
            Knobs,
            quorum=st.integers(min_value=1, max_value=2),
            deny_threshold=st.integers(min_value=1, max_value=2),
            on_extend=st.sampled_from(OnExtend),
            pending_ttl=st.sampled_from([timedelta(hours=1), timedelta(hours=24)]),
            ops_quorum=st.integers(min_value=1, max_value=2),
            ops_all_groups=st.booleans(),
            ops_deny_threshold=st.integers(min_value=1, max_value=2),
            prod_quorum=st.integers(min_value=1, max_value=2),
            prod_deny_threshold=st.integers(min_value=1, max_value=2),
            escalate_after=st.sampled_from([timedelta(minutes=m) for m in (10, 30)]),
            capped_needs_approval=st.booleans(),
            glass_cap=st.sampled_from([timedelta(minutes=30), timedelta(hours=1)]),
        ),
        opening=st.lists(
            st.tuples(
                st.sampled_from(ELIGIBLE),
                st.lists(
                    st.sampled_from((READ, ADMIN, CAPPED)), min_size=1, max_size=2, unique=True
                ),
                st.sampled_from([timedelta(minutes=m) for m in (10, 30, 60, 90)]),
            ),
            max_size=4,
        ),
        then_work=st.booleans(),
    )
    def choose_policy_and_open_with_approved_grants(
        self, knobs: Knobs, opening: list[tuple[str, list[str], timedelta]], then_work: bool
    ) -> None:
        """Every run starts with some approved grants, whatever rules swarm testing enables."""
        self.h = Harness(policy=build_policy(knobs))
        for who, roles, duration in opening:
            with contextlib.suppress(JitAccessError):  # demo/capped may be full
                request = self.h.request(who, *roles, duration=duration)
                for approver in ("carol", "dan", "frank"):
                    if self.h.store.requests[request.id].state is RequestState.PENDING:
                        self.h.decide(approver, request.id)
        if then_work:
            self.work()

    # --- helpers ------------------------------------------------------------------------------
    @property
    def fake(self) -> FakeConnector:
        return self.h.connectors.for_target(self.h.policy.targets["demo"])

    def held(self) -> list[tuple[str, str]]:
        """(principal, role) of every access the fake target holds, read directly: listing it
        through the connector fails while the target is down."""
        return [(a.principal, a.role) for a in list(self.fake.present.values())]

    def pending(self) -> list[Request]:
        return [r for r in self.h.store.requests.values() if r.state is RequestState.PENDING]

    def pick_request(self, pick: Pick) -> Request:
        index, open_only = pick
        requests = list(self.h.store.requests.values())
        pending = self.pending()
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

    def decide_and_count(
        self, who: str, request: Request, decision: Decision, then_work: bool
    ) -> None:
        """Decide; when the oracle says the decision must count for some open stage, it must
        not be refused, unless the request is past its pending TTL or settling it cannot go
        through (the capped role is full, or the grant an extension was for has ended)."""
        now = self.h.clock.now()
        mine = who == request.requester
        must = (
            request.state is RequestState.PENDING
            and not mine
            and any(
                t.may_count(self.h.policy, who, now) for t in tally(self.h.policy, request).values()
            )
        )
        try:
            self.h.decide(who, request.id, decision)
        except JitAccessError as error:
            full = (error.rule or "").endswith(".max_active")
            excused = full or request.is_past_ttl(now) or request.extends_grant_id is not None
            assert not must or excused, (who, error, request)
        if then_work:
            self.work()

    def work(self) -> None:
        healthy = not self.fake.failing
        self.h.work()
        self.healthy_pass_at = self.h.clock.now() if healthy else None

    def has_requests(self) -> bool:
        return bool(self.h.store.requests)

    def has_pending(self) -> bool:
        return bool(self.pending())

    def has_grants(self) -> bool:
        return bool(self.h.store.grants)

    # --- rules --------------------------------------------------------------------------------
    # Each action may be followed by a worker pass at the same instant (`then_work`), as the
    # real worker runs when a commit wakes it.
    @rule(
        who=st.one_of(st.sampled_from(ELIGIBLE), st.sampled_from(REQUESTERS)),
        roles=role_lists,
        duration=st.one_of(st.none(), minutes),
        start_in=st.one_of(st.none(), minutes),
        partial=st.booleans(),
        break_glass=st.sampled_from((False, False, False, True)),
        then_work=st.booleans(),
    )
    def request(
        self,
        who: str,
        roles: list[str],
        duration: timedelta | None,
        start_in: timedelta | None,
        partial: bool,
        break_glass: bool,
        then_work: bool,
    ) -> None:
        self.attempt(
            lambda: self.h.request(
                who,
                *roles,
                duration=duration,
                start_in=start_in,
                partial=partial,
                break_glass=break_glass,
            ),
            then_work,
        )

    @rule(
        who=st.sampled_from(("olive", "olive", "alice")),
        others=st.lists(st.sampled_from((READ, ADMIN, OPS, CAPPED)), max_size=1),
        duration=st.sampled_from([timedelta(minutes=m) for m in (10, 29, 30, 31, 45)]),
        partial=st.booleans(),
        then_work=st.booleans(),
    )
    def request_while_on_call(
        self, who: str, others: list[str], duration: timedelta, partial: bool, then_work: bool
    ) -> None:
        """Around the auto-approval rule's edges: on call or not, at most 30m or just over."""
        self.attempt(
            lambda: self.h.request(who, AUTO, *others, duration=duration, partial=partial),
            then_work,
        )

    @precondition(has_requests)
    @rule(who=approvers, pick=picks, decision=st.sampled_from(Decision), then_work=st.booleans())
    def decide(self, who: str, pick: Pick, decision: Decision, then_work: bool) -> None:
        self.decide_and_count(who, self.pick_request(pick), decision, then_work)

    @precondition(has_pending)
    @rule(
        pick=st.integers(min_value=0, max_value=10_000),
        decision=st.sampled_from(Decision),
        then_work=st.booleans(),
    )
    def decide_own_request(self, pick: int, decision: Decision, then_work: bool) -> None:
        """Nobody decides on their own request, not even an approver of its stages (bob is a
        dba)."""
        pending = self.pending()
        request = pending[pick % len(pending)]
        self.decide_and_count(request.requester, request, decision, then_work)

    @precondition(has_pending)
    @rule(
        pick=st.integers(min_value=0, max_value=10_000),
        choices=st.lists(
            st.tuples(st.integers(min_value=0, max_value=10_000), st.booleans()),
            min_size=1,
            max_size=4,
        ),
        then_work=st.booleans(),
    )
    def decide_as_approvers_of_the_open_stages(
        self, pick: int, choices: list[tuple[int, bool]], then_work: bool
    ) -> None:
        """Random deciders rarely get a three-stage bundle through: here up to four people
        whose decisions must count (chosen by the oracle, not the engine) decide one request
        in turn, mostly approving (a denial when the flag is set and the index is even)."""
        pending = self.pending()
        request = pending[pick % len(pending)]
        for choice, deny in choices:
            current = self.h.store.requests[request.id]
            if current.state is not RequestState.PENDING:
                break
            now = self.h.clock.now()
            tallies = tally(self.h.policy, current).values()
            people = sorted(
                p
                for p in self.h.policy.users
                if p != current.requester
                and any(t.may_count(self.h.policy, p, now) for t in tallies)
            )
            if not people:
                break
            decision = Decision.DENY if deny and choice % 2 == 0 else Decision.APPROVE
            who = people[choice % len(people)]
            self.decide_and_count(who, current, decision, then_work)

    @precondition(has_pending)
    @rule(
        pick=st.integers(min_value=0, max_value=10_000),
        choice=st.integers(min_value=0, max_value=10_000),
        decision=st.sampled_from(Decision),
        then_work=st.booleans(),
    )
    def decide_again(self, pick: int, choice: int, decision: Decision, then_work: bool) -> None:
        """Someone who already decided on a pending request decides on it again: it may count
        only for a stage they have not decided, and with distinct_stage_approvers only for
        another role."""
        pending = [r for r in self.pending() if r.approvals]
        if not pending:
            return
        request = pending[pick % len(pending)]
        who = request.approvals[choice % len(request.approvals)].approver
        self.decide_and_count(who, request, decision, then_work)

    @precondition(has_pending)
    @rule(
        pick=st.integers(min_value=0, max_value=10_000),
        offset=st.sampled_from((-1, -1, 0, 1, 60)),
        choice=st.integers(min_value=0, max_value=10_000),
        decision=st.sampled_from((Decision.APPROVE, Decision.APPROVE, Decision.DENY)),
        later=st.booleans(),
        then_work=st.booleans(),
    )
    def decide_as_a_backup_around_the_escalation(
        self,
        pick: int,
        offset: int,
        choice: int,
        decision: Decision,
        later: bool,
        then_work: bool,
    ) -> None:
        """Move the clock to a second before, at, or after an open stage escalates, and let one
        of its backups decide: before, the decision must not count for that stage. A later
        stage's escalation counts from when the stage before it completed (`later` prefers
        those)."""
        waiting = [
            (request, t)
            for request in self.pending()
            for t in tally(self.h.policy, request).values()
            if t.is_open and t.stages[t.open_index].escalate_after is not None
        ]
        if later and any(t.open_index > 0 for _, t in waiting):
            waiting = [(r, t) for r, t in waiting if t.open_index > 0]
        if not waiting:
            return
        request, t = waiting[pick % len(waiting)]
        stage = t.stages[t.open_index]
        assert stage.escalate_after is not None
        at = t.opened_at + stage.escalate_after + timedelta(seconds=offset)
        if at > self.h.clock.now():
            self.h.clock.advance(at - self.h.clock.now())
        backups = [p for p in self.h.policy.people(stage.escalate_to) if p != request.requester]
        if backups:
            who = backups[choice % len(backups)]
            self.attempt(lambda: self.h.decide(who, request.id, decision), then_work)

    @rule(
        role=st.sampled_from((OPS, PROD)),
        wait=st.integers(min_value=1, max_value=20),
        choices=st.lists(st.integers(min_value=0, max_value=10_000), min_size=8, max_size=8),
        offset=st.sampled_from((-1, 0)),
        then_work=st.booleans(),
    )
    def escalate_a_later_stage(
        self, role: str, wait: int, choices: list[int], offset: int, then_work: bool
    ) -> None:
        """A later stage escalates counting from when the stage before it completed, not from
        the request: ask, let `wait` minutes pass, complete the stages before the next one that
        escalates, then let a backup decide a second before, or at, its escalation. Then those
        who decided the earlier stages try again (only without separation of duties may they)."""
        policy = self.h.policy
        request = self.h.request("alice", role, duration=timedelta(minutes=30))
        self.h.clock.advance(timedelta(minutes=wait))
        for choice in choices:  # enough decisions for every stage before the last
            current = self.h.store.requests[request.id]
            t = tally(policy, current)[role]
            if current.state is not RequestState.PENDING or not t.is_open:
                return
            stage = t.stages[t.open_index]
            if t.open_index > 0 and stage.escalate_after is not None:
                at = t.opened_at + stage.escalate_after + timedelta(seconds=offset)
                self.h.clock.advance(max(at - self.h.clock.now(), timedelta()))
                backup = policy.people(stage.escalate_to)[0]
                self.decide_and_count(backup, current, Decision.APPROVE, then_work)
                for earlier in dict.fromkeys(a.approver for a in current.approvals):
                    current = self.h.store.requests[request.id]
                    self.decide_and_count(earlier, current, Decision.APPROVE, then_work)
                return
            now = self.h.clock.now()
            people = [p for p in sorted(policy.users) if t.may_count(policy, p, now)]
            if not people:
                return
            self.h.decide(people[choice % len(people)], request.id)  # must count

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
            st.sampled_from([0, 1, 30, 60, 300, 1800, 3600]),
            st.integers(min_value=1, max_value=3 * 3600),
        )
    )
    def advance_and_work(self, seconds: int) -> None:
        self.h.clock.advance(timedelta(seconds=seconds))
        self.work()

    @rule(minutes=st.sampled_from((1, 9, 10, 11, 29, 30, 31)))
    def advance_without_work(self, minutes: int) -> None:
        """Time passes before the worker looks: a stage's escalation counts from its own
        clock, not from when the worker announces it."""
        self.h.clock.advance(timedelta(minutes=minutes))

    # --- invariants ---------------------------------------------------------------------------
    @invariant()
    def no_grant_without_every_required_approval(self) -> None:
        policy = self.h.policy
        for grant in self.h.store.grants.values():
            request = self.h.store.requests[grant.request_id]
            assert request.state is RequestState.APPROVED, (grant, request)
            assert grant.id in request.grant_ids
            assert grant.role in request.roles, (grant, request)
            assert request.extends_grant_id is None, (grant, request)
        for request in self.h.store.requests.values():
            if request.state is not RequestState.APPROVED:
                continue
            deciders = {a.approver for a in request.approvals}
            assert request.requester not in deciders, request
            if request.break_glass:
                continue  # break-glass: checked by its own invariant
            granted = {self.h.store.grants[g].role for g in request.grant_ids}
            for role_name in request.roles:
                if request.partial and role_name not in granted:
                    continue  # a bundle with `partial` grants only what was approved
                approval = policy.roles[role_name].approval
                if approval is None or role_name in request.auto_approved:
                    continue
                if request.extends_grant_id and approval.on_extend is OnExtend.NOT_REQUIRED:
                    continue
                distinct: list[set[str]] = []
                for index, stage in enumerate(approval.stages):
                    approvers = {
                        a.approver
                        for a in request.approvals
                        if a.decision is Decision.APPROVE
                        and StageMark(role_name, index) in a.counted_for
                    }
                    assert len(approvers) >= stage.min_approvals, request
                    assert quorum_met(policy, stage, approvers), (stage, request)
                    assert all(
                        any_member(policy, p, stage.approvers + stage.escalate_to)
                        for p in approvers
                    ), (stage, request)
                    distinct.append(approvers)
                if approval.distinct_stage_approvers:
                    everyone = [p for people in distinct for p in people]
                    assert len(everyone) == len(set(everyone)), request

    @invariant()
    def every_decision_counted_as_the_policy_says_and_settled_the_request_accordingly(
        self,
    ) -> None:
        policy = self.h.policy
        for request in self.h.store.requests.values():
            tallies = tally(policy, request)
            expected = outcome(request, tallies)
            if request.state in (RequestState.APPROVED, RequestState.DENIED):
                assert request.state is expected, (expected, request)
            else:  # pending, or cancelled or expired while it was still open
                assert expected is None, (expected, request)
            granted = sorted(self.h.store.grants[g].role for g in request.grant_ids)
            if request.state is not RequestState.APPROVED or request.extends_grant_id:
                assert granted == [], request
            else:
                assert granted == sorted(n for n, t in tallies.items() if t.approved), request

    @invariant()
    def with_partial_no_grant_for_a_denied_role_and_without_it_none_at_all(self) -> None:
        policy = self.h.policy
        for request in self.h.store.requests.values():
            denied = {n for n, t in tally(policy, request).items() if t.denied}
            granted = {self.h.store.grants[g].role for g in request.grant_ids}
            if request.partial:
                assert len(request.roles) > 1, request
                assert not denied & granted, request
            elif denied:
                assert not granted, request
                assert request.state is RequestState.DENIED, request

    @invariant()
    def auto_approval_and_break_glass_only_where_the_policy_allows_them(self) -> None:
        policy = self.h.policy
        for request in self.h.store.requests.values():
            roles = [policy.roles[n] for n in request.roles]
            if request.extends_grant_id is not None:
                assert not request.break_glass and not request.auto_approved, request
                continue
            emergency = request.break_glass
            if any(r.break_glass for r in roles):
                assert emergency, request  # a break_glass role is always an emergency
            if emergency:
                assert all(
                    r.break_glass or policy.users[request.requester].break_glass for r in roles
                ), request
                assert request.duration <= policy.break_glass.max_duration, request
                assert not request.approvals and not request.auto_approved, request
                assert request.pending_until is None, request
                continue
            should = {
                r.name
                for r in roles
                if r.approval is not None and auto_rule_holds(policy, request, r)
            }
            assert set(request.auto_approved) == should, (should, request)

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
    def no_break_glass_grant_longer_than_the_break_glass_cap(self) -> None:
        """An emergency activation is short: never longer than the cap, never extended."""
        policy = self.h.policy
        for grant in self.h.store.grants.values():
            request = self.h.store.requests[grant.request_id]
            if not request.break_glass:
                continue
            assert grant.ends_at - grant.starts_at <= policy.break_glass.max_duration, grant
            assert not any(
                r.extends_grant_id == grant.id for r in self.h.store.requests.values()
            ), grant

    @invariant()
    def no_grant_for_an_ineligible_principal(self) -> None:
        for grant in self.h.store.grants.values():
            assert grant.principal in ELIGIBLE, grant
            assert grant.principal not in ("mallory", "carol"), grant
            assert self.h.policy.is_eligible(grant.principal, grant.role, grant.created_at.date())

    @invariant()
    def live_grants_of_a_capped_role_stay_within_max_active(self) -> None:
        live = [g for g in self.h.store.grants.values() if g.role == CAPPED and g.is_live]
        assert len(live) <= MAX_ACTIVE, live

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
        for principal, role in self.held():
            assert any(
                g.is_live and g.principal == principal and g.role == role
                for g in self.h.store.grants.values()
            ), f"leftover access {principal}@{role}"
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
        for principal, role in self.held():
            assert any(
                g.is_live
                and g.principal == principal
                and g.role == role
                and (g.ends_at > now or waiting_for_retry(g, now))
                for g in self.h.store.grants.values()
            ), f"access {principal}@{role} outlives every grant that explains it"

    @invariant()
    def audit_chain_verifies(self) -> None:
        """The records written since the last step extend the verified chain; the whole chain
        is verified again at the end of the run (hashing it all after every step is slow)."""
        records = self.h.store.audit
        checked = self.audit_checked
        assert records[: len(checked)] == checked, "verified audit records changed"
        prev = checked[-1] if checked else None
        for record in records[len(checked) :]:
            assert record.seq == (prev.seq + 1 if prev else 1), record
            assert record.prev_hash == (prev.hash if prev else GENESIS), record
            assert record.hash == chain_hash(record.prev_hash, record.seq, record.entry), record
            prev = record
        self.audit_checked = list(records)

    def teardown(self) -> None:
        verification = verify(self.h.store.audit)
        assert verification.ok, verification


def test_lifecycle_rules_hold_under_any_sequence_of_actions() -> None:
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(max_examples=200, stateful_step_count=60, deadline=None),
    )
