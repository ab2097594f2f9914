"""MFA step-up by TOTP through the REST API on SQLite and PostgreSQL: enrolment (the secret shown
once), confirmation, wrong codes and the lockout, admin reset, the step-up check inside a use
case's transaction (one code passes once, even when two requests race), and the `jitaccess mfa`
commands run in-process against the same app."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import httpx
import pyotp
import pytest
from typer.testing import CliRunner

from jitaccess.domain.errors import JitAccessError, PolicyViolation
from jitaccess.domain.mfa import LOCKOUT, MAX_FAILURES
from jitaccess.entrypoints import cli_mfa
from jitaccess.entrypoints.cli import app as cli_app
from jitaccess.entrypoints.cli_client import Client
from jitaccess.services.context import audit
from jitaccess.services.mfa import verify_step_up
from support.api import Api, TestClient, assert_problem

URI = "otpauth://totp/jitaccess:alice?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=jitaccess"


def enrol(api: Api, who: str = "alice") -> dict[str, Any]:
    response = api.post(who, "/api/v1/mfa/enroll")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def code_now(api: Api, secret: str, offset: int = 0) -> str:
    return pyotp.TOTP(secret).at(api.clock.now(), counter_offset=offset)


def wrong_code(api: Api, secret: str) -> str:
    valid = {code_now(api, secret, offset) for offset in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222") if c not in valid)


def confirmed(api: Api, who: str = "alice") -> str:
    secret: str = enrol(api, who)["secret"]
    response = api.post(who, "/api/v1/mfa/confirm", {"code": code_now(api, secret)})
    assert response.status_code == 200, response.text
    api.clock.advance(timedelta(seconds=30))  # the confirmation used this step's code
    return secret


def delete(api: Api, who: str, url: str) -> httpx.Response:
    response: httpx.Response = api.client.delete(url, headers=api.auth(who))
    return response


# --- enrolment --------------------------------------------------------------------------------


def test_enrolling_returns_the_secret_once_and_nothing_else_shows_it(api: Api) -> None:
    response = api.post("alice", "/api/v1/mfa/enroll")

    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["issuer"] == "jitaccess"
    assert body["otpauth_uri"] == (
        f"otpauth://totp/jitaccess:alice?secret={body['secret']}&issuer=jitaccess"
    )
    state = api.get("alice", "/api/v1/mfa")
    assert state.json() == {"enrolled": True, "confirmed": False, "locked_until": None}
    assert body["secret"] not in state.text
    trail = json.dumps(api.audit())
    assert "mfa.enrolled" in trail
    assert body["secret"] not in trail


def test_someone_never_enrolled_sees_so(api: Api) -> None:
    response = api.get("bob", "/api/v1/mfa")

    assert response.json() == {"enrolled": False, "confirmed": False, "locked_until": None}


def test_a_computed_code_confirms_and_a_confirmed_enrolment_cannot_be_replaced(api: Api) -> None:
    secret = enrol(api)["secret"]

    response = api.post("alice", "/api/v1/mfa/confirm", {"code": code_now(api, secret)})

    assert response.status_code == 200, response.text
    assert response.json() == {"enrolled": True, "confirmed": True, "locked_until": None}
    again = api.post("alice", "/api/v1/mfa/enroll")
    assert assert_problem(again, 409, "conflict")["rule"] == "mfa-enrolled"
    twice = api.post("alice", "/api/v1/mfa/confirm", {"code": code_now(api, secret)})
    assert assert_problem(twice, 409, "conflict")["rule"] == "mfa-confirmed"
    assert "mfa.confirmed" in {r["action"] for r in api.audit()}


def test_confirming_without_enrolling_tells_them_to_enrol(api: Api) -> None:
    response = api.post("alice", "/api/v1/mfa/confirm", {"code": "123456"})

    body = assert_problem(response, 422, "policy-violation")
    assert body["rule"] == "mfa-not-enrolled"
    assert "jitaccess mfa enroll" in body["detail"]


@pytest.mark.parametrize("body", [{"code": "12345"}, {"code": "12345a"}, {}, {"code": "1", "x": 1}])
def test_a_malformed_confirmation_is_a_422(api: Api, body: dict[str, Any]) -> None:
    enrol(api)

    response = api.post("alice", "/api/v1/mfa/confirm", body)

    assert_problem(response, 422, "invalid-input")
    assert api.get("alice", "/api/v1/mfa").json()["locked_until"] is None


# --- wrong codes and the lockout --------------------------------------------------------------


def test_wrong_codes_are_422_until_the_fifth_locks_with_429_until_the_lockout_ends(
    api: Api,
) -> None:
    secret = enrol(api)["secret"]
    wrong = wrong_code(api, secret)
    for _ in range(MAX_FAILURES - 1):
        refused = api.post("alice", "/api/v1/mfa/confirm", {"code": wrong})
        assert assert_problem(refused, 422, "policy-violation")["rule"] == "mfa-invalid"

    locked = api.post("alice", "/api/v1/mfa/confirm", {"code": wrong})

    assert assert_problem(locked, 429, "rate-limited")["rule"] == "mfa-locked"
    until = api.get("alice", "/api/v1/mfa").json()["locked_until"]
    assert until is not None
    right = api.post("alice", "/api/v1/mfa/confirm", {"code": code_now(api, secret)})
    assert assert_problem(right, 429, "rate-limited")["rule"] == "mfa-locked"
    trail = api.audit()
    failures = [r for r in trail if r["action"] == "mfa.failed"]
    assert [r["data"]["reason"] for r in failures] == ["wrong-code"] * MAX_FAILURES + ["locked"]
    assert all(r["outcome"] == "refused" for r in failures)
    assert "mfa.locked" in {r["action"] for r in trail}
    assert all(wrong not in json.dumps([r["data"], r["comment"]]) for r in failures)

    api.clock.advance(LOCKOUT)
    after = api.post("alice", "/api/v1/mfa/confirm", {"code": code_now(api, secret)})
    assert after.status_code == 200, after.text
    assert after.json() == {"enrolled": True, "confirmed": True, "locked_until": None}


# --- admin reset ------------------------------------------------------------------------------


def test_an_admin_resets_an_enrolment_and_others_are_refused(api: Api) -> None:
    confirmed(api)

    refused = delete(api, "bob", "/api/v1/mfa/alice")
    reset = delete(api, "sec", "/api/v1/mfa/alice")

    assert_problem(refused, 403, "forbidden")
    assert reset.status_code == 204
    assert reset.content == b""
    assert api.get("alice", "/api/v1/mfa").json()["enrolled"] is False
    assert_problem(delete(api, "sec", "/api/v1/mfa/alice"), 404, "not-found")
    resets = [(r["actor"], r["outcome"]) for r in api.audit() if r["action"] == "mfa.reset"]
    assert resets == [("bob", "refused"), ("sec", "ok")]
    enrol(api)  # a new phone


# --- step-up inside a use case's transaction, on the real stores -------------------------------


def _use_case(api: Api, code: str) -> None:
    """What request and approval use cases do: check the code, write, commit both together."""
    with api.container.uow() as uow:
        verify_step_up(
            uow,
            api.clock,
            api.container.box,
            principal="alice",
            code=code,
            purpose="request",
            subject="req_1",
        )
        audit(uow, api.clock.now(), "alice", "request.created", "req_1")
        uow.commit()


def test_a_step_up_code_is_committed_with_the_change_and_refused_when_replayed(api: Api) -> None:
    secret = confirmed(api)
    code = code_now(api, secret)

    _use_case(api, code)
    with pytest.raises(PolicyViolation) as replayed:
        _use_case(api, code)

    assert replayed.value.rule == "mfa-invalid"
    trail = api.audit()
    assert [r["action"] for r in trail].count("request.created") == 1
    (failed,) = [r for r in trail if r["action"] == "mfa.failed"]
    assert failed["data"] == {
        "purpose": "request",
        "subject": "req_1",
        "reason": "replayed",
        "rule": "mfa-invalid",
    }


def test_two_racing_uses_of_one_code_cannot_both_pass(api: Api) -> None:
    secret = confirmed(api)
    code = code_now(api, secret)
    outcome: list[BaseException | None] = []

    def second() -> None:
        try:
            _use_case(api, code)
            outcome.append(None)
        except BaseException as error:  # reported by the assertions below
            outcome.append(error)

    with api.container.uow() as uow:
        verify_step_up(
            uow,
            api.clock,
            api.container.box,
            principal="alice",
            code=code,
            purpose="request",
            subject="req_1",
        )
        racer = threading.Thread(target=second)
        racer.start()
        racer.join(timeout=0.3)
        assert racer.is_alive(), "the second use did not wait for the first one's row lock"
        audit(uow, api.clock.now(), "alice", "request.created", "req_1")
        uow.commit()
    racer.join(timeout=30)

    (error,) = outcome
    assert isinstance(error, JitAccessError)
    assert error.rule == "mfa-invalid"
    trail = api.audit()
    assert [r["action"] for r in trail].count("request.created") == 1
    assert [r["data"]["reason"] for r in trail if r["action"] == "mfa.failed"] == ["replayed"]


# --- the commands -----------------------------------------------------------------------------


def _cli(api: Api, who: str, monkeypatch: pytest.MonkeyPatch, *args: str, code: int = 0) -> str:
    """Run `jitaccess mfa ...` in-process, its Client talking to the test app as `who`."""

    def client() -> Client:
        real = Client(url="http://testserver", token=api.tokens[who])
        real.http = TestClient(
            api.client.app, base_url="http://testserver/api/v1", headers=api.auth(who)
        )
        return real

    monkeypatch.setattr(cli_mfa, "Client", client)
    result = CliRunner().invoke(cli_app, ["mfa", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_the_mfa_commands_enrol_confirm_show_status_and_reset(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = json.loads(_cli(api, "alice", monkeypatch, "status", "--json"))
    assert status == {"enrolled": False, "confirmed": False, "locked_until": None}
    enrolled = json.loads(_cli(api, "alice", monkeypatch, "enroll", "--json"))
    assert enrolled["otpauth_uri"].startswith("otpauth://totp/jitaccess:alice?secret=")

    shown = _cli(api, "alice", monkeypatch, "confirm", code_now(api, enrolled["secret"]))
    assert "enrolled and confirmed" in shown
    again = _cli(api, "alice", monkeypatch, "enroll", code=5)
    assert "mfa-enrolled" in again
    assert "only admins" in _cli(api, "bob", monkeypatch, "reset", "alice", code=3)
    assert "reset" in _cli(api, "sec", monkeypatch, "reset", "alice")

    printed = _cli(api, "alice", monkeypatch, "enroll")
    assert "█" in printed
    assert "confirm with: jitaccess mfa confirm CODE" in printed
    quiet = _cli(api, "alice", monkeypatch, "enroll", "--no-qr")
    assert "█" not in quiet
    assert "otpauth://totp/jitaccess:alice?secret=" in quiet
    assert "not confirmed yet" in _cli(api, "alice", monkeypatch, "status")


def test_the_qr_code_is_drawn_as_a_block_of_half_block_characters() -> None:
    import segno

    drawn = cli_mfa.qr_block(URI)

    lines = drawn.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert set(drawn) <= {" ", "\u2580", "\u2584", "\u2588", "\n"}
    # Each character is two modules, top and bottom; light modules are drawn (the quiet zone
    # is solid), so reading the characters back gives the QR code's own matrix.
    top = {" ": 1, "\u2580": 0, "\u2584": 1, "\u2588": 0}
    bottom = {" ": 1, "\u2580": 1, "\u2584": 0, "\u2588": 0}
    rows: list[list[int]] = []
    for line in lines:
        rows.append([top[c] for c in line])
        rows.append([bottom[c] for c in line])
    qr = segno.make_qr(URI)
    border = 4
    size = len(qr.matrix)
    modules = [row[border : border + size] for row in rows[border : border + size]]
    assert modules == [list(row) for row in qr.matrix]
