"""A harness for unit tests: policy built in code, in-memory storage, a fake clock and
fake connectors, and one-line calls for each use case."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from jitaccess.adapters.connectors.fake import FakeConnector, FakeConnectors
from jitaccess.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from jitaccess.clock import FakeClock
from jitaccess.domain.model import Decision, EndReason, Grant, GrantState, Request
from jitaccess.domain.policy import (
    ApprovalPolicy,
    DurationPolicy,
    Eligibility,
    OnExtend,
    Policy,
    PrincipalRef,
    Requirements,
    Role,
    Stage,
    Target,
    User,
)
from jitaccess.ports import AuditRecord, OnCall, PolicyVersion
from jitaccess.services.cancel_request import cancel_request
from jitaccess.services.decide_request import decide_request
from jitaccess.services.end_grant import end_grant
from jitaccess.services.extend_grant import Extension, extend_grant
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkerOptions, WorkReport, run_due_work


class PlainBox:
    """A SecretBox that only reverses bytes: unit tests need sealing, not secrecy."""

    def seal(self, plaintext: bytes) -> bytes:
        return plaintext[::-1]

    def open(self, sealed: bytes) -> bytes:
        return sealed[::-1]


def user(name: str) -> PrincipalRef:
    return PrincipalRef("user", name)


def group(name: str) -> PrincipalRef:
    return PrincipalRef("group", name)


def sample_policy(
    *,
    stages: tuple[Stage, ...] | None = None,
    on_extend: OnExtend = OnExtend.REQUIRED,
    pending_ttl: timedelta = timedelta(hours=24),
) -> Policy:
    """alice (engineers) may ask for demo/read (no approval) and demo/admin (approval by dba)."""
    stages = stages or (Stage(name="dba", approvers=(group("dba"), user("carol"))),)
    return Policy(
        users={
            "alice": User("alice", groups=("engineers",)),
            "bob": User("bob", groups=("dba",)),
            "dan": User("dan", groups=("dba",)),
            "carol": User("carol", groups=("leads",)),
            "mallory": User("mallory", groups=("contractors",)),
            "sam": User("sam", groups=("security",)),
            "erin": User("erin", groups=("audit",)),
        },
        targets={"demo": Target("demo", "fake")},
        roles={
            "demo/read": Role(
                "demo/read",
                "demo",
                (("scope", "read"),),
                DurationPolicy(timedelta(hours=1), timedelta(hours=2), timedelta(minutes=5)),
            ),
            "demo/admin": Role(
                "demo/admin",
                "demo",
                (("scope", "admin"),),
                DurationPolicy(timedelta(hours=1), timedelta(hours=4)),
                require=Requirements(justification=True, ticket=r"INC-[0-9]+"),
                approval=ApprovalPolicy(stages, pending_ttl=pending_ttl, on_extend=on_extend),
            ),
        },
        eligibility=(Eligibility((group("engineers"), user("bob")), ("demo/read", "demo/admin")),),
        admins=(group("security"),),
        auditors=(user("erin"),),
    )


@dataclass
class Harness:
    policy: Policy = field(default_factory=sample_policy)
    clock: FakeClock = field(default_factory=FakeClock)
    store: MemoryStore = field(default_factory=MemoryStore)
    connectors: FakeConnectors = field(default_factory=FakeConnectors)
    box: PlainBox = field(default_factory=PlainBox)
    options: WorkerOptions = field(
        default_factory=lambda: WorkerOptions(jitter=lambda: 1.0, flag_after=timedelta(minutes=5))
    )
    oncall: OnCall | None = None

    def __post_init__(self) -> None:
        self.uow = MemoryUnitOfWorkFactory(self.store)
        self.store.policies.append(
            PolicyVersion(1, self.policy, {}, "digest-1", self.clock.now(), "test")
        )

    @property
    def fake(self):  # type: ignore[no-untyped-def]
        return self.connectors.for_target(self.policy.targets["demo"])

    def request(
        self,
        who: str,
        *roles: str,
        duration: timedelta | None = None,
        justification: str = "maintenance window",
        ticket: str | None = "INC-1",
        start_in: timedelta | None = None,
        partial: bool = False,
        break_glass: bool = False,
        mfa_code: str | None = None,
    ) -> Request:
        with self.uow() as uow:
            result = request_access(
                uow,
                self.clock,
                self.connectors,
                requester=who,
                roles=list(roles),
                duration=duration,
                justification=justification,
                ticket=ticket,
                start_at=self.clock.now() + start_in if start_in else None,
                partial=partial,
                break_glass=break_glass,
                mfa_code=mfa_code,
                box=self.box,
                oncall=self.oncall,
            )
        assert isinstance(result, Request)
        return result

    def decide(
        self,
        who: str,
        request_id: str,
        decision: Decision = Decision.APPROVE,
        *,
        mfa_code: str | None = None,
    ) -> Request:
        with self.uow() as uow:
            return decide_request(
                uow,
                self.clock,
                self.connectors,
                request_id=request_id,
                approver=who,
                decision=decision,
                comment="ok",
                mfa_code=mfa_code,
                box=self.box,
            )

    def cancel(self, who: str, request_id: str) -> Request:
        with self.uow() as uow:
            return cancel_request(uow, self.clock, request_id=request_id, principal=who)

    def end(self, who: str, grant_id: str, reason: EndReason, comment: str = "done") -> Grant:
        with self.uow() as uow:
            return end_grant(
                uow, self.clock, grant_id=grant_id, actor=who, reason=reason, comment=comment
            )

    def extend(self, who: str, grant_id: str, by: timedelta) -> Extension:
        with self.uow() as uow:
            return extend_grant(
                uow,
                self.clock,
                self.connectors,
                grant_id=grant_id,
                principal=who,
                duration=by,
                justification="more time",
                ticket="INC-1",
            )

    def work(self) -> WorkReport:
        return run_due_work(self.uow, self.clock, self.connectors, self.box, self.options)

    def grant(self, grant_id: str) -> Grant:
        found = self.store.grants[grant_id]
        return found

    def grants_of(self, request: Request) -> list[Grant]:
        return [self.store.grants[g] for g in self.store.requests[request.id].grant_ids]

    def audit_actions(self) -> list[str]:
        return [r.entry.action for r in self.store.audit]


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
