"""Twenty approvers deciding one two-stage quorum request at the same moment, on real storage:
exactly one grant; every decision is either counted once (three for the first stage, two for
the second) or refused, nobody counts for two stages, and the audit chain verifies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jitaccess.bootstrap import Container
from jitaccess.clock import FakeClock
from jitaccess.domain.errors import JitAccessError
from jitaccess.domain.model import Decision, Request, RequestState
from jitaccess.services.decide_request import decide_request
from jitaccess.services.request_access import request_access
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on

APPROVERS = [f"approver{i:02d}" for i in range(20)]

POLICY = (
    "users:\n  alice: {groups: [engineers]}\n"
    + "".join(f"  {name}: {{groups: [approvers]}}\n" for name in APPROVERS)
    + """\
targets:
  demo: {type: fake}
roles:
  demo/deploy:
    target: demo
    duration: {default: 30m, max: 1h}
    approval:
      stages:
        - {name: peers, approvers: [group:approvers], min_approvals: 3}
        - {name: owners, approvers: [group:approvers], min_approvals: 2}
eligibility:
  - principals: [group:engineers]
    roles: [demo/deploy]
"""
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Container]:
    with container_on(request.param, tmp_path, policy=POLICY, clock=FakeClock()) as container:
        yield container


def test_twenty_concurrent_deciders_give_one_grant_and_count_each_decision_once(
    app: Container,
) -> None:
    with app.uow() as uow:
        request = request_access(
            uow,
            app.clock,
            app.connectors,
            requester="alice",
            roles=["demo/deploy"],
            duration=timedelta(minutes=30),
            justification="release 4.2",
        )
    assert isinstance(request, Request)
    outcomes: dict[str, str] = {}
    lock = threading.Lock()
    start = threading.Barrier(len(APPROVERS))

    def decide(approver: str) -> None:
        start.wait()
        try:
            with app.uow() as uow:
                decide_request(
                    uow,
                    app.clock,
                    app.connectors,
                    request_id=request.id,
                    approver=approver,
                    decision=Decision.APPROVE,
                    comment="lgtm",
                    box=app.box,
                )
            result = "counted"
        except JitAccessError as error:
            result = error.rule or error.code
        with lock:
            outcomes[approver] = result

    threads = [threading.Thread(target=decide, args=(name,)) for name in APPROVERS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    counted = sorted(name for name, result in outcomes.items() if result == "counted")
    refused = {result for result in outcomes.values() if result != "counted"}
    assert len(counted) == 5, outcomes
    assert refused == {"stale-decision"}, outcomes
    with app.uow.readonly() as uow:
        stored = uow.requests.get(request.id)
        grants = uow.grants.list(request_id=request.id)
        records = list(uow.audit.iterate())
        verification = verify_audit(uow)
    assert stored is not None and stored.state is RequestState.APPROVED
    assert len(grants) == 1
    marks = [(a.approver, m.stage) for a in stored.approvals for m in a.counted_for]
    assert sorted(a for a, _ in marks) == counted  # each counted once, for one stage
    assert sorted(stage for _, stage in marks) == [0, 0, 0, 1, 1]
    decisions = [r.entry for r in records if r.entry.subject == request.id]
    assert sum(e.action == "request.approval" for e in decisions) == 5
    assert sum(e.action == "request.approve" and e.outcome == "refused" for e in decisions) == 15
    assert sum(e.action == "request.approved" for e in decisions) == 1
    assert verification.ok, verification
