"""MFA step-up by TOTP on the in-memory store: the RFC 6238 arithmetic, enrolment and
confirmation, replay protection, the guessing limit and its lockout, clock skew, admin reset,
and secrets kept out of the audit trail."""

from __future__ import annotations

import base64
import json
from dataclasses import fields
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from jitaccess.domain.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PolicyViolation,
    RateLimited,
)
from jitaccess.domain.mfa import FAILURE_WINDOW, LOCKOUT, MAX_FAILURES, MfaEnrollment
from jitaccess.services.context import audit
from jitaccess.services.mfa import Enrolment, confirm, enroll, reset, status, verify_step_up
from support.lifecycle import Harness, records

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()  # RFC 6238 appendix B, SHA-1
RFC_VECTORS = [  # (T in seconds, 8-digit code)
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def code_now(h: Harness, secret: str, offset: int = 0) -> str:
    return pyotp.TOTP(secret).at(h.clock.now(), counter_offset=offset)


def wrong_code(h: Harness, secret: str) -> str:
    """A well-formed code that matches no step in the skew window."""
    valid = {code_now(h, secret, offset) for offset in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


def enrol(h: Harness, who: str = "alice") -> str:
    with h.uow() as uow:
        return enroll(uow, h.clock, h.box, principal=who).secret


def confirmed(h: Harness, who: str = "alice") -> str:
    """Enrol and confirm `who`, then move to the next step so a fresh code is usable."""
    secret = enrol(h, who)
    with h.uow() as uow:
        confirm(uow, h.clock, h.box, principal=who, code=code_now(h, secret))
    h.clock.advance(timedelta(seconds=30))
    return secret


def step_up(h: Harness, code: str | None, who: str = "alice", *, commit: bool = True) -> None:
    """What a use case does: check the code first, write its change, commit both together."""
    with h.uow() as uow:
        verify_step_up(
            uow, h.clock, h.box, principal=who, code=code, purpose="request", subject="req_1"
        )
        audit(uow, h.clock.now(), who, "request.created", "req_1")
        if commit:
            uow.commit()


def current_step(h: Harness) -> int:
    return int(h.clock.now().timestamp()) // 30


def stored(h: Harness, who: str = "alice") -> MfaEnrollment:
    return h.store.mfa[who]


def state_of(h: Harness, who: str = "alice") -> dict[str, object]:
    with h.uow() as uow:
        return status(uow, principal=who, clock=h.clock)


# --- the arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "expected"), RFC_VECTORS)
def test_totp_codes_follow_the_rfc_6238_sha1_vectors(seconds: int, expected: str) -> None:
    assert pyotp.TOTP(RFC_SECRET, digits=8).at(at(seconds)) == expected


def test_the_step_up_accepts_each_rfc_vector_at_its_own_time_step() -> None:
    h = Harness()
    h.store.mfa["alice"] = MfaEnrollment(
        "alice", h.box.seal(RFC_SECRET.encode()), at(0), confirmed_at=at(0)
    )

    for seconds, expected in RFC_VECTORS:
        h.clock.set(at(seconds))
        step_up(h, expected[-6:])  # a 6-digit code is the last 6 digits of the 8-digit one

        assert stored(h).last_step == seconds // 30


# --- enrolment and confirmation ---------------------------------------------------------------


def test_enrolling_returns_a_base32_secret_and_an_otpauth_uri_and_stores_it_sealed() -> None:
    h = Harness()

    with h.uow() as uow:
        enrolment = enroll(uow, h.clock, h.box, principal="alice")

    assert len(base64.b32decode(enrolment.secret)) == 20
    assert enrolment.otpauth_uri == (
        f"otpauth://totp/jitaccess:alice?secret={enrolment.secret}&issuer=jitaccess"
    )
    assert stored(h).secret == h.box.seal(enrolment.secret.encode())
    assert enrolment.secret.encode() not in stored(h).secret
    assert enrolment.secret not in repr(enrolment)
    assert state_of(h) == {"enrolled": True, "confirmed": False, "locked_until": None}
    assert [r.entry.subject for r in records(h, "mfa.enrolled")] == ["alice"]


def test_nobody_is_enrolled_until_they_enrol() -> None:
    h = Harness()

    assert state_of(h) == {"enrolled": False, "confirmed": False, "locked_until": None}


def test_enrolling_again_before_confirming_replaces_the_secret() -> None:
    h = Harness()
    first = enrol(h)

    second = enrol(h)

    assert second != first
    assert stored(h).secret == h.box.seal(second.encode())


def test_a_valid_code_confirms_the_enrolment() -> None:
    h = Harness()
    secret = enrol(h)

    with h.uow() as uow:
        confirm(uow, h.clock, h.box, principal="alice", code=code_now(h, secret))

    assert state_of(h)["confirmed"] is True
    assert stored(h).confirmed_at == h.clock.now()
    assert len(records(h, "mfa.confirmed")) == 1


def test_a_wrong_confirmation_code_is_refused_and_counted() -> None:
    h = Harness()
    secret = enrol(h)

    with h.uow() as uow, pytest.raises(PolicyViolation) as refused:
        confirm(uow, h.clock, h.box, principal="alice", code=wrong_code(h, secret))

    assert refused.value.rule == "mfa-invalid"
    assert state_of(h)["confirmed"] is False
    assert stored(h).failures == 1
    assert records(h, "mfa.failed", outcome="refused")[0].entry.data["purpose"] == "confirm"


def test_confirming_twice_is_a_conflict() -> None:
    h = Harness()
    secret = confirmed(h)

    with h.uow() as uow, pytest.raises(Conflict) as refused:
        confirm(uow, h.clock, h.box, principal="alice", code=code_now(h, secret))

    assert refused.value.rule == "mfa-confirmed"


def test_enrolling_again_once_confirmed_is_refused() -> None:
    h = Harness()
    secret = confirmed(h)

    with h.uow() as uow, pytest.raises(Conflict) as refused:
        enroll(uow, h.clock, h.box, principal="alice")

    assert refused.value.rule == "mfa-enrolled"
    assert stored(h).secret == h.box.seal(secret.encode())


# --- step-up ----------------------------------------------------------------------------------


def test_a_valid_code_passes_and_its_step_is_saved_with_the_callers_commit() -> None:
    h = Harness()
    secret = confirmed(h)
    code = code_now(h, secret)

    step_up(h, code, commit=False)
    assert stored(h).last_step == current_step(h) - 1  # still the confirmation's step

    step_up(h, code)

    assert stored(h).last_step == current_step(h)
    assert len(records(h, "request.created")) == 1


def test_a_code_with_spaces_in_the_middle_is_accepted() -> None:
    h = Harness()
    secret = confirmed(h)
    code = code_now(h, secret)

    step_up(h, f" {code[:3]} {code[3:]} ")

    assert stored(h).last_step == current_step(h)


def test_the_same_code_again_is_refused_as_replayed_and_drops_the_callers_change() -> None:
    h = Harness()
    secret = confirmed(h)
    code = code_now(h, secret)
    step_up(h, code)

    with pytest.raises(PolicyViolation) as refused:
        step_up(h, code)

    assert refused.value.rule == "mfa-invalid"
    (failed,) = records(h, "mfa.failed", outcome="refused")
    assert failed.entry.data["reason"] == "replayed"
    assert failed.entry.data["purpose"] == "request"
    assert failed.entry.data["subject"] == "req_1"
    assert len(records(h, "request.created")) == 1
    assert stored(h).failures == 1


def test_a_wrong_code_is_refused_and_audited_without_the_code() -> None:
    h = Harness()
    secret = confirmed(h)
    wrong = wrong_code(h, secret)

    with pytest.raises(PolicyViolation) as refused:
        step_up(h, wrong)

    assert refused.value.rule == "mfa-invalid"
    assert wrong not in refused.value.message
    (failed,) = records(h, "mfa.failed", outcome="refused")
    assert failed.entry.actor == "alice"
    assert failed.entry.data["reason"] == "wrong-code"
    assert wrong not in json.dumps(failed.entry.data)
    assert records(h, "request.created") == []


def test_the_fifth_wrong_code_locks_and_then_even_a_right_code_is_refused() -> None:
    h = Harness()
    secret = confirmed(h)
    wrong = wrong_code(h, secret)
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(PolicyViolation):
            step_up(h, wrong)

    with pytest.raises(RateLimited) as locked:
        step_up(h, wrong)

    assert locked.value.rule == "mfa-locked"
    until = h.clock.now() + LOCKOUT
    assert until.isoformat() in locked.value.message
    assert len(records(h, "mfa.locked")) == 1
    assert state_of(h)["locked_until"] == until.isoformat()
    with pytest.raises(RateLimited):
        step_up(h, code_now(h, secret))
    last = records(h, "mfa.failed", outcome="refused")[-1]
    assert last.entry.data["reason"] == "locked"
    assert records(h, "request.created") == []


def test_the_lock_lifts_after_the_lockout() -> None:
    h = Harness()
    secret = confirmed(h)
    wrong = wrong_code(h, secret)
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(PolicyViolation):
            step_up(h, wrong)
    with pytest.raises(RateLimited):
        step_up(h, wrong)

    h.clock.advance(LOCKOUT - timedelta(seconds=1))
    with pytest.raises(RateLimited):
        step_up(h, code_now(h, secret))
    h.clock.advance(timedelta(seconds=31))
    step_up(h, code_now(h, secret))

    assert state_of(h)["locked_until"] is None
    assert len(records(h, "request.created")) == 1


def test_wrong_codes_outside_the_failure_window_start_a_new_count() -> None:
    h = Harness()
    secret = confirmed(h)
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(PolicyViolation):
            step_up(h, wrong_code(h, secret))

    h.clock.advance(FAILURE_WINDOW)
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(PolicyViolation) as refused:
            step_up(h, wrong_code(h, secret))
        assert not isinstance(refused.value, RateLimited)

    assert stored(h).failures == MAX_FAILURES - 1
    step_up(h, code_now(h, secret))
    assert stored(h).failures == 0


def test_one_step_of_clock_skew_either_way_is_accepted() -> None:
    h = Harness()
    secret = confirmed(h)
    h.clock.advance(timedelta(seconds=30))  # so the step before now was never used

    step_up(h, code_now(h, secret, -1))
    step_up(h, code_now(h, secret, +1))

    assert stored(h).last_step == current_step(h) + 1


@pytest.mark.parametrize("offset", [-2, 2])
def test_two_steps_of_clock_skew_are_refused(offset: int) -> None:
    h = Harness()
    secret = confirmed(h)

    with pytest.raises(PolicyViolation) as refused:
        step_up(h, code_now(h, secret, offset))

    assert refused.value.rule == "mfa-invalid"
    assert records(h, "mfa.failed", outcome="refused")[0].entry.data["reason"] == "wrong-code"


def test_an_older_step_after_a_newer_one_counts_as_a_replay() -> None:
    h = Harness()
    secret = confirmed(h)
    step_up(h, code_now(h, secret, +1))

    with pytest.raises(PolicyViolation):
        step_up(h, code_now(h, secret))

    assert records(h, "mfa.failed", outcome="refused")[0].entry.data["reason"] == "replayed"


def test_a_missing_code_is_refused_as_required() -> None:
    h = Harness()
    confirmed(h)

    for code in (None, "", "   "):
        with pytest.raises(PolicyViolation) as refused:
            step_up(h, code)
        assert refused.value.rule == "mfa-required"
        assert "requires an MFA code" in refused.value.message


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", "12345x", "١٢٣٤٥٦"])
def test_a_malformed_code_is_invalid_input_and_not_counted(code: str) -> None:
    h = Harness()
    confirmed(h)

    with pytest.raises(InvalidInput) as refused:
        step_up(h, code)

    assert refused.value.field == "mfa_code"
    assert stored(h).failures == 0
    assert records(h, "mfa.failed", outcome="refused") == []


def test_step_up_without_enrolment_tells_them_to_enrol() -> None:
    h = Harness()

    with pytest.raises(PolicyViolation) as refused:
        step_up(h, "123456")

    assert refused.value.rule == "mfa-not-enrolled"
    assert "jitaccess mfa enroll" in refused.value.message


def test_an_unconfirmed_enrolment_does_not_pass_step_up() -> None:
    h = Harness()
    secret = enrol(h)

    with pytest.raises(PolicyViolation) as refused:
        step_up(h, code_now(h, secret))

    assert refused.value.rule == "mfa-not-enrolled"
    assert stored(h).last_step is None


# --- reset ------------------------------------------------------------------------------------


def test_an_admin_resets_an_enrolment_and_the_owner_can_enrol_again() -> None:
    h = Harness()
    confirmed(h)

    with h.uow() as uow:
        reset(uow, h.clock, actor="sam", principal="alice")

    assert "alice" not in h.store.mfa
    (record,) = records(h, "mfa.reset")
    assert (record.entry.actor, record.entry.subject) == ("sam", "alice")
    enrol(h)
    assert state_of(h) == {"enrolled": True, "confirmed": False, "locked_until": None}


def test_only_admins_reset_enrolments() -> None:
    h = Harness()
    confirmed(h)

    for who in ("bob", "alice"):
        with h.uow() as uow, pytest.raises(Forbidden):
            reset(uow, h.clock, actor=who, principal="alice")

    assert "alice" in h.store.mfa
    assert [r.entry.actor for r in records(h, "mfa.reset", outcome="refused")] == ["bob", "alice"]


def test_resetting_someone_not_enrolled_is_not_found() -> None:
    h = Harness()

    with h.uow() as uow, pytest.raises(NotFound):
        reset(uow, h.clock, actor="sam", principal="alice")


# --- secrets ----------------------------------------------------------------------------------


def test_the_secret_and_codes_appear_in_no_audit_record_or_error() -> None:
    h = Harness()
    with h.uow() as uow:
        enrolment = enroll(uow, h.clock, h.box, principal="alice")
    secret = enrolment.secret
    used = [code_now(h, secret)]
    with h.uow() as uow:
        confirm(uow, h.clock, h.box, principal="alice", code=used[0])
    errors: list[Exception] = []
    for code in (used[0], wrong_code(h, secret)):
        try:
            step_up(h, code)
        except PolicyViolation as error:
            errors.append(error)
    h.clock.advance(timedelta(seconds=30))
    used.append(code_now(h, secret))
    step_up(h, used[1])
    for _ in range(MAX_FAILURES):
        try:
            step_up(h, wrong_code(h, secret))
        except (PolicyViolation, RateLimited) as error:
            errors.append(error)
    with h.uow() as uow:
        reset(uow, h.clock, actor="sam", principal="alice")

    sealed = h.box.seal(secret.encode()).decode()
    forbidden = [secret, sealed, enrolment.otpauth_uri, *used]
    assert len(h.store.audit) > 10
    for record in h.store.audit:
        text = " ".join(
            json.dumps(value, default=str) if isinstance(value, dict) else str(value)
            for value in (getattr(record.entry, f.name) for f in fields(record.entry))
        )
        assert not [s for s in forbidden if s in text], record.entry.action
    for failure in errors:
        assert not [s for s in forbidden if s in str(failure)]
    assert isinstance(enrolment, Enrolment)
    assert secret not in repr(enrolment)
