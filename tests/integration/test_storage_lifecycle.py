"""The services on real storage: SQLite and PostgreSQL run the same lifecycle and audit tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.bootstrap import Container
from jitaccess.clock import FakeClock
from jitaccess.domain.errors import AuditWriteFailed, Conflict
from jitaccess.domain.model import Decision, GrantState, Request, RequestState
from jitaccess.services.check_access import check_access
from jitaccess.services.decide_request import decide_request
from jitaccess.services.fetch_credentials import fetch_credentials
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkerOptions, run_due_work
from jitaccess.services.verify_audit import verify_audit
from support.databases import container_on

pytestmark = pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(kind: str, tmp_path: Path, clock: FakeClock) -> Iterator[Container]:
    with container_on(kind, tmp_path, clock=clock) as container:
        yield container


def _request(app: Container, role: str, who: str = "alice", minutes: int = 10) -> Request:
    with app.uow() as uow:
        result = request_access(
            uow,
            app.clock,
            app.connectors,
            requester=who,
            roles=[role],
            duration=timedelta(minutes=minutes),
            justification="incident 7",
        )
    assert isinstance(result, Request)
    return result


def _work(app: Container) -> None:
    run_due_work(app.uow, app.clock, app.connectors, app.box, WorkerOptions(jitter=lambda: 1.0))


def _fake(app: Container) -> FakeConnector:
    connector = app.connectors.for_target(app.current_policy().targets["demo"])
    assert isinstance(connector, FakeConnector)
    return connector


def test_request_approve_provision_expire_round_trip(app: Container, clock: FakeClock) -> None:
    request = _request(app, "demo/admin")
    assert request.state is RequestState.PENDING
    with app.uow() as uow:
        decided = decide_request(
            uow,
            clock,
            app.connectors,
            request_id=request.id,
            approver="bob",
            decision=Decision.APPROVE,
            comment="go",
        )
    assert decided.state is RequestState.APPROVED and len(decided.grant_ids) == 1
    _work(app)
    grant_id = decided.grant_ids[0]
    with app.uow.readonly() as uow:
        grant = uow.grants.get(grant_id)
        stored = uow.requests.get(request.id)
    assert grant is not None and grant.state is GrantState.ACTIVE
    assert stored is not None and stored.approvals[0].approver == "bob"
    assert _fake(app).has("alice", "demo/admin")
    with app.uow() as uow:
        creds = fetch_credentials(uow, clock, app.box, grant_id=grant_id, principal="alice")
    assert creds["username"] == "alice@demo/admin"
    with app.uow() as uow, pytest.raises(Conflict):
        fetch_credentials(uow, clock, app.box, grant_id=grant_id, principal="alice")
    with app.uow.readonly() as uow:
        assert check_access(uow, clock, principal="alice", role="demo/admin").active

    clock.advance(timedelta(minutes=10))
    _work(app)
    with app.uow.readonly() as uow:
        ended = uow.grants.get(grant_id)
        assert ended is not None and ended.state is GrantState.EXPIRED
        assert ended.ended_at == clock.now()
        assert not check_access(uow, clock, principal="alice", role="demo/admin").active
        verification = verify_audit(uow)
    assert not _fake(app).has("alice", "demo/admin")
    assert verification.ok, verification


def test_credentials_are_sealed_at_rest(app: Container) -> None:
    request = _request(app, "demo/read")
    _work(app)
    with app.engine.connect() as conn:
        sealed = conn.execute(
            text("SELECT credentials FROM grants WHERE id = :id"), {"id": request.grant_ids[0]}
        ).scalar_one()
    assert sealed is not None and b"alice@demo/read" not in bytes(sealed)


def test_next_due_is_the_nearest_end(app: Container, clock: FakeClock) -> None:
    _request(app, "demo/read", minutes=30)
    _request(app, "demo/read", minutes=5)
    _work(app)
    with app.uow.readonly() as uow:
        assert uow.grants.next_due_at() == clock.now() + timedelta(minutes=5)


def test_edited_audit_row_is_named_by_verify(app: Container) -> None:
    _request(app, "demo/read")
    _work(app)
    with app.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3"))
    with app.uow.readonly() as uow:
        verification = verify_audit(uow)
    assert not verification.ok
    assert verification.first_bad_seq == 3
    assert "edited" in (verification.reason or "")


def test_deleted_audit_row_is_named_by_verify(app: Container) -> None:
    _request(app, "demo/read")
    _work(app)
    with app.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 2"))
    with app.uow.readonly() as uow:
        verification = verify_audit(uow)
    assert (verification.ok, verification.first_bad_seq) == (False, 2)


def test_failed_audit_write_refuses_the_change(app: Container, kind: str) -> None:
    with app.engine.begin() as conn:
        if kind == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
                    "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit disk full'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
                    "FOR EACH ROW EXECUTE FUNCTION no_audit()"
                )
            )
    with pytest.raises(AuditWriteFailed):
        _request(app, "demo/read")
    with app.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM requests")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM grants")).scalar_one() == 0


def test_concurrent_approvals_grant_exactly_once(app: Container, kind: str) -> None:
    threads_count = 6 if kind == "sqlite" else 20
    request = _request(app, "demo/admin")
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads_count)

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
                )
            result = "approved"
        except Conflict:
            result = "conflict"
        with lock:
            outcomes.append(result)

    # bob and dan are both approvers; each of them clicks several times at once.
    approvers = ["bob", "dan"] * (threads_count // 2)
    threads = [threading.Thread(target=decide, args=(a,)) for a in approvers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("approved") == 1
    assert outcomes.count("conflict") == threads_count - 1
    with app.uow.readonly() as uow:
        grants = uow.grants.list(request_id=request.id)
        stored = uow.requests.get(request.id)
        verification = verify_audit(uow)
    assert len(grants) == 1
    assert stored is not None and len(stored.approvals) == 1
    assert verification.ok, verification


def test_two_workers_claim_each_grant_once(app: Container) -> None:
    for _ in range(40):
        _request(app, "demo/read")
    fake = _fake(app)
    start = threading.Barrier(2)

    def work() -> None:
        start.wait()
        _work(app)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    provisions = [grant for call, grant in fake.calls if call == "provision"]
    assert len(provisions) == 40
    assert len(set(provisions)) == 40
    with app.uow.readonly() as uow:
        assert len(uow.grants.list(state="active")) == 40
        assert verify_audit(uow).ok


def test_policy_cannot_drop_a_role_with_live_grants(app: Container, tmp_path: Path) -> None:
    from jitaccess.bootstrap import apply_policy_files
    from support.databases import POLICY

    _request(app, "demo/read")
    trimmed = tmp_path / "trimmed.yaml"
    trimmed.write_text(
        POLICY.replace(
            "  demo/read:\n    target: demo\n    grants: {scope: read}\n"
            "    duration: {default: 10m, max: 1h, min: 1s}\n",
            "",
        ).replace("roles: [demo/read, demo/admin]", "roles: [demo/admin]")
    )
    with pytest.raises(Conflict) as refused:
        apply_policy_files(app, [str(trimmed)], actor="test")
    assert refused.value.rule == "live-grants" and "demo/read" in refused.value.message
    with app.uow.readonly() as uow:
        current = uow.policies.current()
        assert current is not None and current.version == 1
        assert uow.audit.last(1)[0].entry.outcome == "refused"
