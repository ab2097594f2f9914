"""MFA step-up by TOTP: an enrollment, replay protection and the guessing limit.

The code arithmetic (RFC 6238) lives in services/mfa.py; this file holds the rules: a code
is accepted only for a time step later than the last one used, and after `MAX_FAILURES` wrong
codes within `FAILURE_WINDOW` the principal is locked out for `LOCKOUT`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
LOCKOUT = timedelta(minutes=15)


@dataclass
class MfaEnrollment:
    principal: str
    # Sealed by the server's SecretBox; never stored, logged or printed in the clear.
    secret: bytes = field(repr=False)
    created_at: datetime
    confirmed_at: datetime | None = None  # a first valid code proved the authenticator works
    last_step: int | None = None  # the TOTP time step of the last accepted code
    failures: int = 0
    failures_since: datetime | None = None
    locked_until: datetime | None = None

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None

    def is_locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def is_replay(self, step: int) -> bool:
        return self.last_step is not None and step <= self.last_step

    def accept(self, step: int, now: datetime) -> None:
        self.last_step = step
        self.failures = 0
        self.failures_since = None
        self.locked_until = None
        if self.confirmed_at is None:
            self.confirmed_at = now

    def record_failure(self, now: datetime) -> bool:
        """Count a wrong (or replayed) code; True when this failure locks the principal out."""
        if self.failures_since is None or now - self.failures_since >= FAILURE_WINDOW:
            self.failures, self.failures_since = 0, now
        self.failures += 1
        if self.failures >= MAX_FAILURES:
            self.locked_until = now + LOCKOUT
            self.failures, self.failures_since = 0, None
            return True
        return False
