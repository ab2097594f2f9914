"""MFA step-up by TOTP (RFC 6238: 30 s steps, 6 digits, SHA-1): enrol, confirm, reset, and the
check other use cases run inside their own unit of work when a policy asks for a code.

The rules (replay, guessing limit) live in domain/mfa.py; this module does the code arithmetic
with pyotp, always at the injected clock's time, and keeps the secret sealed at rest.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyotp

from jitaccess.domain.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    JitAccessError,
    NotFound,
    PolicyViolation,
    RateLimited,
)
from jitaccess.domain.mfa import MfaEnrollment
from jitaccess.ports import AuditEntry, Clock, SecretBox, UnitOfWork
from jitaccess.services.context import audit, current_policy, refuse

ISSUER = "jitaccess"
DIGITS = 6
STEP_SECONDS = 30
SKEW_STEPS = 1  # authenticator clocks drift: accept the previous and the next step too

_NOT_ENROLLED = "mfa-not-enrolled"
ENROLL_HINT = "run `jitaccess mfa enroll`, then `jitaccess mfa confirm CODE`"


@dataclass(frozen=True)
class Enrolment:
    """What the owner needs to set up an authenticator app; shown to them once, never logged."""

    secret: str = field(repr=False)  # base32
    otpauth_uri: str = field(repr=False)  # otpauth://totp/<issuer>:<principal>?secret=...


def enroll(
    uow: UnitOfWork, clock: Clock, box: SecretBox, *, principal: str, issuer: str = ISSUER
) -> Enrolment:
    """A new secret for `principal`, replacing an unconfirmed one; a confirmed enrolment must be
    reset by an admin first, so a stolen API token cannot swap in an authenticator of its own."""
    now = clock.now()
    existing = uow.mfa.get(principal, for_update=True)
    if existing is not None and existing.confirmed:
        raise Conflict(
            f"{principal} already has a confirmed MFA enrolment; an admin must reset it "
            "(`jitaccess mfa reset USER`) before enrolling again",
            rule="mfa-enrolled",
        )
    if existing is not None and existing.is_locked(now):
        # Re-enrolling must not be a way around the guessing limit.
        raise _locked(existing)
    secret = pyotp.random_base32()
    uow.mfa.save(
        MfaEnrollment(principal=principal, secret=box.seal(secret.encode()), created_at=now)
    )
    audit(
        uow,
        now,
        principal,
        "mfa.enrolled",
        principal,
        data={"issuer": issuer, "replaced": existing is not None},
    )
    uow.commit()
    uri = _totp(secret).provisioning_uri(name=principal, issuer_name=issuer)
    return Enrolment(secret=secret, otpauth_uri=uri)


def confirm(uow: UnitOfWork, clock: Clock, box: SecretBox, *, principal: str, code: str) -> None:
    """The first valid code proves the authenticator works; wrong ones count toward the lockout."""
    digits = _digits(code, field="code")
    enrollment = uow.mfa.get(principal, for_update=True)
    if enrollment is None:
        raise PolicyViolation(
            f"{principal} has not enrolled in MFA: {ENROLL_HINT}", rule=_NOT_ENROLLED
        )
    if enrollment.confirmed:
        raise Conflict(
            f"the MFA enrolment of {principal} is already confirmed", rule="mfa-confirmed"
        )
    _check(uow, clock, box, enrollment, digits, purpose="confirm", subject=principal)
    audit(uow, clock.now(), principal, "mfa.confirmed", principal)
    uow.commit()


def status(uow: UnitOfWork, *, principal: str, clock: Clock | None = None) -> dict[str, object]:
    """Whether `principal` is enrolled and confirmed, and until when they are locked out.

    With a clock, a lockout that has already ended is reported as None."""
    enrollment = uow.mfa.get(principal)
    locked_until = enrollment.locked_until if enrollment is not None else None
    if enrollment is not None and clock is not None and not enrollment.is_locked(clock.now()):
        locked_until = None
    return {
        "enrolled": enrollment is not None,
        "confirmed": enrollment is not None and enrollment.confirmed,
        "locked_until": locked_until.isoformat() if locked_until is not None else None,
    }


def reset(uow: UnitOfWork, clock: Clock, *, actor: str, principal: str) -> None:
    """Delete `principal`'s enrolment (a lost phone); admins only."""
    now = clock.now()
    if not current_policy(uow).policy.is_admin(actor):
        raise refuse(
            uow,
            now,
            actor,
            "mfa.reset",
            principal,
            Forbidden("only admins can reset an MFA enrolment", rule="not-an-admin"),
        )
    enrollment = uow.mfa.get(principal, for_update=True)
    if enrollment is None:
        raise NotFound(f"{principal} has no MFA enrolment")
    uow.mfa.delete(principal)
    audit(uow, now, actor, "mfa.reset", principal, data={"was_confirmed": enrollment.confirmed})
    uow.commit()


def verify_step_up(
    uow: UnitOfWork,
    clock: Clock,
    box: SecretBox,
    *,
    principal: str,
    code: str | None,
    purpose: str,
    subject: str,
) -> None:
    """Check `principal`'s code inside the caller's unit of work, before the caller writes.

    On success the accepted time step is saved but not committed: it is committed with the
    caller's change, so a code is used up only if the change happens. On a wrong or replayed code
    the caller's transaction is rolled back, the failure is counted and committed, and the error
    raised. The enrolment row is locked, so two concurrent uses of one code cannot both pass.
    """
    if code is None or not code.strip():
        raise PolicyViolation(
            f"{purpose} requires an MFA code from {principal}'s authenticator app (mfa_code)",
            rule="mfa-required",
        )
    digits = _digits(code, field="mfa_code")
    enrollment = uow.mfa.get(principal, for_update=True)
    if enrollment is None or not enrollment.confirmed:
        raise PolicyViolation(
            f"{purpose} requires MFA, and {principal} has no confirmed MFA enrolment: "
            + ENROLL_HINT,
            rule=_NOT_ENROLLED,
        )
    _check(uow, clock, box, enrollment, digits, purpose=purpose, subject=subject)


# --- the check shared by confirm and verify_step_up ---------------------------------------------


def _check(
    uow: UnitOfWork,
    clock: Clock,
    box: SecretBox,
    enrollment: MfaEnrollment,
    code: str,
    *,
    purpose: str,
    subject: str,
) -> None:
    """Accept `code` (saving the step, uncommitted) or record the failure (committed) and raise."""
    now = clock.now()
    principal = enrollment.principal
    context = {"purpose": purpose, "subject": subject}
    if enrollment.is_locked(now):
        error = _locked(enrollment)
        uow.rollback()  # the refusal is recorded alone, never with the caller's change
        _refused(uow, now, principal, error, {**context, "reason": "locked"})
        uow.commit()
        raise error
    step = _matching_step(box.open(enrollment.secret).decode(), code, now)
    if step is not None and not enrollment.is_replay(step):
        enrollment.accept(step, now)
        uow.mfa.save(enrollment)
        return
    reason = "wrong-code" if step is None else "replayed"
    raise _fail(uow, now, principal, reason, context)


def _fail(
    uow: UnitOfWork, now: datetime, principal: str, reason: str, context: dict[str, str]
) -> JitAccessError:
    """Count a failure in a transaction of its own (the caller's change is dropped)."""
    uow.rollback()
    error: JitAccessError = PolicyViolation(
        "the MFA code is wrong, expired or already used; wait for the next code and try again",
        rule="mfa-invalid",
    )
    enrollment = uow.mfa.get(principal, for_update=True)
    locked = False
    if enrollment is not None:  # an admin may have reset it meanwhile
        locked = enrollment.record_failure(now)
        uow.mfa.save(enrollment)
        if locked:
            error = _locked(enrollment)
    _refused(uow, now, principal, error, {**context, "reason": reason})
    if locked and enrollment is not None:
        audit(
            uow,
            now,
            principal,
            "mfa.locked",
            principal,
            data={**context, "locked_until": _iso(enrollment.locked_until)},
        )
    uow.commit()
    return error


def _refused(
    uow: UnitOfWork, now: datetime, principal: str, error: JitAccessError, data: dict[str, Any]
) -> None:
    uow.audit.append(
        AuditEntry(
            actor=principal,
            action="mfa.failed",
            subject=principal,
            at=now,
            outcome="refused",
            comment=error.message,
            data={"rule": error.rule, **data},
        )
    )


def _locked(enrollment: MfaEnrollment) -> RateLimited:
    return RateLimited(
        f"too many wrong MFA codes: {enrollment.principal} is locked out until "
        f"{_iso(enrollment.locked_until)}",
        rule="mfa-locked",
    )


def _digits(code: str, *, field: str) -> str:
    """The code without the spaces apps show in the middle; 6 digits or InvalidInput."""
    cleaned = "".join(code.split())
    if len(cleaned) != DIGITS or not (cleaned.isascii() and cleaned.isdigit()):
        raise InvalidInput(f"an MFA code is {DIGITS} digits", field=field)
    return cleaned


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)


def _matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step whose code is `code`, within the allowed skew; the latest if several match
    (so a code can never pass twice by matching an older step the second time)."""
    totp = _totp(secret)
    current = totp.timecode(now)
    matched: int | None = None
    # Every candidate is compared, so the time taken says nothing about which one matched.
    for offset in range(-SKEW_STEPS, SKEW_STEPS + 1):
        expected = totp.at(now, counter_offset=offset)
        if hmac.compare_digest(expected.encode(), code.encode()):
            matched = current + offset
    return matched


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
