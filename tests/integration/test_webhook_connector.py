"""The webhook connector against a real HTTP receiver on a loopback port, which checks every
signature with `verify_signature`; and the whole lifecycle through the worker on SQLite."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jitaccess.adapters.connectors.webhook import WebhookConnector, sign, verify_signature
from jitaccess.clock import FakeClock
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.model import GrantState, Request
from jitaccess.domain.policy import ConnectionRef, Target
from jitaccess.ports import Access, ExistingAccess
from jitaccess.services.fetch_credentials import fetch_credentials
from jitaccess.services.reconcile import reconcile
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkerOptions, run_due_work
from support.databases import container_on


@dataclass
class Attempt:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


@dataclass
class Receiver:
    """A webhook receiver: verifies signatures, records every attempt, answers as told."""

    secret: str
    attempts: list[Attempt] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers to give first, in order
    error_body: str = "boom"
    credentials: dict[str, str] | None = None
    listing: list[dict[str, Any]] = field(default_factory=list)
    stall: threading.Event | None = None  # while set, hold every answer until it is cleared
    released: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def list_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/access"

    def delivered(self, event: str) -> list[Attempt]:
        return [
            a
            for a in self.attempts
            if a.method == "POST" and a.status == 200 and a.payload["event"] == event
        ]

    def answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        verified = verify_signature(
            self.secret,
            handler.headers.get("X-Jitaccess-Timestamp", ""),
            body,
            handler.headers.get("X-Jitaccess-Signature", ""),
            time.time(),
        )
        if self.stall is not None:
            self.released.wait(10)
        if not verified:
            status, reply = 401, b"bad signature"
        elif self.statuses:
            status, reply = self.statuses.pop(0), self.error_body.encode()
        elif method == "GET":
            status, reply = 200, json.dumps({"access": self.listing}).encode()
        else:
            event = json.loads(body)["event"]
            answer = {"credentials": self.credentials} if event == "provision" else {"ok": True}
            status, reply = 200, json.dumps(answer).encode()
        headers = dict(handler.headers.items())
        self.attempts.append(Attempt(method, handler.path, headers, body, verified, status))
        # A client that gave up waiting has closed the connection.
        with suppress(BrokenPipeError, ConnectionResetError):
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            handler.wfile.write(reply)


@contextmanager
def running(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver.answer(self, "POST")

        def do_GET(self) -> None:
            receiver.answer(self, "GET")

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet: the receiver records what it is sent."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    with running(Receiver(secret)) as started:
        yield started


@contextmanager
def webhook(
    receiver: Receiver, secret: str | None = None, **options: Any
) -> Iterator[WebhookConnector]:
    target = Target("hooks", "webhook", None, tuple({"url": receiver.url, **options}.items()))
    made = WebhookConnector(target, secret or receiver.secret)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def hooks(receiver: Receiver) -> Iterator[WebhookConnector]:
    with webhook(receiver, list_url=receiver.list_url, timeout=5) as made:
        yield made


def make_access(principal: str = "alice@example.com") -> Access:
    now = datetime.now(UTC).replace(microsecond=0)
    return Access(
        grant_id=str(uuid.uuid4()),
        principal=principal,
        role="hooks/deploy",
        target="hooks",
        grants={"pipeline": "deploy", "environments": ("staging", "prod")},
        starts_at=now,
        ends_at=now + timedelta(hours=1),
        params={"ssh_public_key": "ssh-ed25519 AAAA test"},
    )


def test_provision_revoke_and_extend_arrive_signed_with_the_event(
    receiver: Receiver, hooks: WebhookConnector
) -> None:
    receiver.credentials = {"username": "deployer", "token": "t-123"}
    access = make_access()

    assert hooks.provision(access) == {"username": "deployer", "token": "t-123"}
    later = Access(**{**access.__dict__, "ends_at": access.ends_at + timedelta(minutes=30)})
    hooks.extend(later)
    hooks.revoke(later)

    assert [a.payload["event"] for a in receiver.attempts] == ["provision", "extend", "revoke"]
    assert all(a.verified and a.status == 200 and a.path == "/hook" for a in receiver.attempts)
    provision = receiver.attempts[0]
    account = hooks.account_of(access)
    assert provision.payload == {
        "event": "provision",
        "id": f"provision:{access.grant_id}",
        "grant_id": access.grant_id,
        "principal": "alice@example.com",
        "account": account,
        "role": "hooks/deploy",
        "target": "hooks",
        "grants": {"pipeline": "deploy", "environments": ["staging", "prod"]},
        "params": {"ssh_public_key": "ssh-ed25519 AAAA test"},
        "starts_at": access.starts_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ends_at": access.ends_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert account.startswith("jit_alice_example_com_") and len(account) <= 32
    headers = {k.lower(): v for k, v in provision.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["x-jitaccess-event"] == "provision"
    assert headers["x-jitaccess-delivery"] == f"provision:{access.grant_id}"
    assert abs(int(headers["x-jitaccess-timestamp"]) - time.time()) < 60
    # Compact, sorted keys: the bytes signed are the bytes a receiver can recompute.
    assert (
        provision.body
        == json.dumps(provision.payload, sort_keys=True, separators=(",", ":")).encode()
    )
    extend = receiver.attempts[1].payload
    assert extend["ends_at"] == later.ends_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert extend["id"] == f"extend:{access.grant_id}:{extend['ends_at']}"


def test_a_failed_delivery_raises_and_its_retry_carries_the_same_body(
    receiver: Receiver, hooks: WebhookConnector
) -> None:
    access = make_access()
    receiver.statuses = [500]

    with pytest.raises(ConnectorError, match=r"revoke of grant .* answered HTTP 500") as caught:
        hooks.revoke(access)
    hooks.revoke(access)

    failed, succeeded = receiver.attempts
    assert (failed.status, succeeded.status) == (500, 200)
    assert failed.body == succeeded.body
    assert failed.headers["X-Jitaccess-Delivery"] == succeeded.headers["X-Jitaccess-Delivery"]
    assert "webhook target hooks" in str(caught.value)


def test_the_secret_never_appears_in_an_error_even_when_the_receiver_echoes_it(
    receiver: Receiver, hooks: WebhookConnector, secret: str
) -> None:
    receiver.statuses = [500]
    receiver.error_body = f"cannot use key {secret}\nmore"

    with pytest.raises(ConnectorError) as caught:
        hooks.provision(make_access())

    assert secret not in str(caught.value)
    assert "cannot use key ***" in str(caught.value)


def test_a_receiver_with_another_secret_refuses_and_the_error_says_401(
    receiver: Receiver,
) -> None:
    wrong = secrets.token_urlsafe(24)
    with webhook(receiver, secret=wrong) as hooks:
        with pytest.raises(ConnectorError, match="HTTP 401") as caught:
            hooks.provision(make_access())
        assert wrong not in str(caught.value) and receiver.secret not in str(caught.value)
    assert [a.verified for a in receiver.attempts] == [False]


def test_verification_refuses_a_tampered_body_a_wrong_secret_and_a_stale_timestamp(
    receiver: Receiver, hooks: WebhookConnector, secret: str
) -> None:
    hooks.revoke(make_access())
    (delivery,) = receiver.attempts
    stamp = delivery.headers["X-Jitaccess-Timestamp"]
    signature = delivery.headers["X-Jitaccess-Signature"]
    now = float(stamp)

    assert signature.startswith("sha256=")
    assert verify_signature(secret, stamp, delivery.body, signature, now)
    tampered = delivery.body.replace(b'"revoke"', b'"provision"')
    assert not verify_signature(secret, stamp, tampered, signature, now)
    assert not verify_signature("not-the-secret", stamp, delivery.body, signature, now)
    assert not verify_signature(secret, str(int(stamp) + 1), delivery.body, signature, now)
    assert not verify_signature(secret, stamp, delivery.body, signature, now + 301)
    assert not verify_signature(secret, stamp, delivery.body, signature, now - 301)
    assert not verify_signature(secret, "soon", delivery.body, signature, now)
    assert verify_signature(secret, stamp, delivery.body, signature, now + 299)
    assert sign(secret, stamp, delivery.body) == signature


def test_an_accepted_but_unfinished_delivery_is_not_taken_as_done(
    receiver: Receiver, hooks: WebhookConnector
) -> None:
    receiver.statuses = [202]

    with pytest.raises(ConnectorError, match="202 Accepted"):
        hooks.revoke(make_access())


def test_list_url_reports_what_the_receiver_holds(
    receiver: Receiver, hooks: WebhookConnector
) -> None:
    access = make_access()
    receiver.listing = [
        {"account": hooks.account_of(access), "principal": access.principal, "grant_id": "g1"},
        {"account": "carol", "principal": "carol", "grant_id": None, "detail": {"by": "hand"}},
    ]

    found = hooks.list_access([{"pipeline": "deploy"}])

    assert found == [
        ExistingAccess(access.principal, hooks.account_of(access), "g1", {}),
        ExistingAccess("carol", "carol", None, {"by": "hand"}),
    ]
    (listing,) = receiver.attempts
    assert (listing.method, listing.path, listing.verified) == ("GET", "/access", True)
    assert listing.headers["X-Jitaccess-Event"] == "list"


def test_without_list_url_nothing_is_listed_and_nothing_is_asked(receiver: Receiver) -> None:
    with webhook(receiver) as hooks:
        # Drift detection skips a target that cannot list, instead of calling grants missing.
        assert hooks.can_list is False
        assert hooks.list_access() == []
    assert receiver.attempts == []


def test_a_malformed_listing_is_an_error(receiver: Receiver, hooks: WebhookConnector) -> None:
    receiver.listing = [{"principal": "carol"}]

    with pytest.raises(ConnectorError, match=r"access\[0\]\.account"):
        hooks.list_access()


def test_remove_and_check_are_signed_events_too(
    receiver: Receiver, hooks: WebhookConnector
) -> None:
    hooks.remove(ExistingAccess("carol", "carol", None, {"groups": ["ops"]}))
    hooks.check()

    removal, check = (a.payload for a in receiver.attempts)
    assert removal == {
        "event": "remove",
        "id": "remove:carol",
        "account": "carol",
        "principal": "carol",
        "grant_id": None,
        "target": "hooks",
        "detail": {"groups": ["ops"]},
    }
    assert check == {"event": "check", "id": "check:hooks", "target": "hooks"}
    assert all(a.verified for a in receiver.attempts)


def test_malformed_credentials_in_a_reply_are_an_error(
    receiver: Receiver, hooks: WebhookConnector
) -> None:
    receiver.credentials = {"port": 5432}  # type: ignore[dict-item]

    with pytest.raises(ConnectorError, match="credentials in the reply must map names"):
        hooks.provision(make_access())


def test_a_receiver_that_does_not_answer_in_time_is_an_error(receiver: Receiver) -> None:
    receiver.stall = threading.Event()
    too_slow = pytest.raises(ConnectorError, match=r"did not answer within 0\.2 s")
    with webhook(receiver, timeout=0.2) as hooks, too_slow:
        hooks.revoke(make_access())
    receiver.released.set()


def test_an_unreachable_receiver_is_an_error(receiver: Receiver) -> None:
    closed = Receiver(receiver.secret)
    with running(closed):
        pass  # the port is free again once the server is closed
    unreachable = pytest.raises(ConnectorError, match=r"cannot reach http://127\.0\.0\.1")
    with webhook(closed) as hooks, unreachable:
        hooks.check()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option url is required"),
        ({"url": "ftp://example.org/hook"}, "must be an http"),
        ({"url": "http://hooks.example.org/x"}, "plain http to hooks.example.org"),
        ({"url": "https://h.example.org", "timeout": 0}, "timeout must be more than 0"),
        ({"url": "https://h.example.org", "timeout": "10"}, "timeout must be a number"),
        ({"url": "https://h.example.org", "headers": ("Authorization: x",)}, "Authorization"),
        ({"url": "https://h.example.org", "headers": ("X-Api-Key: x",)}, "looks like a cred"),
        ({"url": "https://h.example.org", "headers": ("X-Jitaccess-Event: x",)}, "set by"),
        ({"url": "https://h.example.org", "headers": ("no colon",)}, "not 'Name: value'"),
        ({"url": "https://h.example.org", "retries": 3}, "unknown option(s) retries"),
        ({"url": "https://h.example.org", "shared": "yes"}, "shared must be true or false"),
    ],
)
def test_bad_options_are_refused_with_the_target_named(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConnectorError, match="webhook target hooks: .*" + re.escape(message)):
        WebhookConnector(Target("hooks", "webhook", None, tuple(options.items())), "s3cret")


def test_good_options_and_the_secret_from_a_file(tmp_path: Path) -> None:
    key = tmp_path / "hook.key"
    key.write_text("s3cret-value\n")
    target = Target(
        "hooks",
        "webhook",
        ConnectionRef(file=str(key)),
        (
            ("url", "http://hooks.example.org/x"),
            ("allow_http", True),
            ("headers", ("X-Team: payments", "X-Env:prod")),
            ("shared", True),
        ),
    )
    made = WebhookConnector.from_target(target)
    try:
        assert made.headers == {"X-Team": "payments", "X-Env": "prod"}
        assert made.timeout == 10.0
        assert made.per_grant_account is False
        assert WebhookConnector.per_grant_account_for(target) is False
        access = make_access()
        assert made.account_of(access) == "alice@example.com@hooks/deploy"
    finally:
        made.close()
    missing = Target("hooks", "webhook", ConnectionRef(file=str(tmp_path / "nope")), ())
    with pytest.raises(ConnectorError, match="cannot read connection file"):
        WebhookConnector.from_target(missing)


def test_grant_problems_keep_grants_plain() -> None:
    assert WebhookConnector.grant_problems({"pipeline": "deploy", "envs": ("a", "b")}) == []
    assert WebhookConnector.grant_problems({}) == []
    problems = dict(
        WebhookConnector.grant_problems(
            {"bad key": "x", "long": "x" * 1001, "ctl": "a\x1bb", "nested": ({"a": 1},)}
        )
    )
    assert set(problems) == {"bad key", "long", "ctl", "nested"}


# --- through the worker, on SQLite -------------------------------------------------------------

POLICY = """
admins: [group:security]
users:
  alice: {{groups: [engineers]}}
  sam: {{groups: [security]}}
targets:
  hooks:
    type: webhook
    connection: {{file: {key}}}
    options:
      url: {url}
      timeout: 5
      headers: ["X-Team: platform"]
      list_url: {list_url}
    drift: remove
roles:
  hooks/deploy:
    target: hooks
    grants: {{pipeline: deploy, environments: [staging, prod]}}
    duration: {{default: 10m, max: 1h}}
eligibility:
  - principals: [group:engineers]
    roles: [hooks/deploy]
"""


def test_worker_provisions_and_retries_a_failed_revoke_until_the_receiver_recovers(
    receiver: Receiver, tmp_path: Path
) -> None:
    key = tmp_path / "hook.key"
    key.write_text(receiver.secret + "\n")
    receiver.credentials = {"username": "alice-deploy", "token": "t-42"}
    clock = FakeClock()
    policy = POLICY.format(key=key, url=receiver.url, list_url=receiver.list_url)
    with container_on("sqlite", tmp_path, policy=policy, clock=clock) as app:

        def work() -> None:
            options = WorkerOptions(jitter=lambda: 1.0)
            run_due_work(app.uow, app.clock, app.connectors, app.box, options)

        def state(grant_id: str) -> GrantState:
            with app.uow.readonly() as uow:
                grant = uow.grants.get(grant_id)
            assert grant is not None
            return grant.state

        with app.uow() as uow:
            request = request_access(
                uow,
                clock,
                app.connectors,
                requester="alice",
                roles=["hooks/deploy"],
                duration=timedelta(minutes=10),
                justification="release 7",
            )
        assert isinstance(request, Request)
        (grant_id,) = request.grant_ids
        work()

        assert state(grant_id) is GrantState.ACTIVE
        (provision,) = receiver.delivered("provision")
        assert provision.payload["grant_id"] == grant_id
        assert provision.payload["grants"] == {
            "environments": ["staging", "prod"],
            "pipeline": "deploy",
        }
        assert provision.headers["X-Team"] == "platform"
        with app.uow() as uow:
            credentials = fetch_credentials(
                uow, clock, app.box, grant_id=grant_id, principal="alice"
            )
        assert credentials == {"username": "alice-deploy", "token": "t-42"}

        receiver.statuses = [500, 500]
        clock.advance(timedelta(minutes=10))
        work()
        assert state(grant_id) is GrantState.REVOKING
        clock.advance(timedelta(minutes=1))
        work()
        assert state(grant_id) is GrantState.REVOKING
        assert receiver.delivered("revoke") == []

        clock.advance(timedelta(minutes=1))
        work()
        assert state(grant_id) is GrantState.EXPIRED
        revokes = [a for a in receiver.attempts if a.payload["event"] == "revoke"]
        assert [a.status for a in revokes] == [500, 500, 200]
        assert len({a.body for a in revokes}) == 1
        assert all(a.verified for a in receiver.attempts)


def test_reconcile_keeps_what_a_grant_explains_and_removes_the_rest(
    receiver: Receiver, tmp_path: Path
) -> None:
    key = tmp_path / "hook.key"
    key.write_text(receiver.secret + "\n")
    clock = FakeClock()
    policy = POLICY.format(key=key, url=receiver.url, list_url=receiver.list_url)
    with container_on("sqlite", tmp_path, policy=policy, clock=clock) as app:
        with app.uow() as uow:
            request = request_access(
                uow,
                clock,
                app.connectors,
                requester="alice",
                roles=["hooks/deploy"],
                duration=timedelta(minutes=10),
                justification="release 8",
            )
        assert isinstance(request, Request)
        run_due_work(app.uow, clock, app.connectors, app.box, WorkerOptions(jitter=lambda: 1.0))
        (provision,) = receiver.delivered("provision")
        # The receiver reports the account and grant id the provision event named, and one
        # entry somebody added by hand.
        receiver.listing = [
            {
                "account": provision.payload["account"],
                "principal": "alice",
                "grant_id": provision.payload["grant_id"],
            },
            {"account": "mallory", "principal": "mallory", "grant_id": None},
        ]

        report = reconcile(app.uow, clock, app.connectors)

    (result,) = report.targets
    assert (result.ok, result.unexplained, result.removed, result.missing) == (
        True,
        ["mallory"],
        ["mallory"],
        [],
    )
    (removal,) = receiver.delivered("remove")
    assert removal.payload["account"] == "mallory" and removal.verified
