"""One error tree for the whole product. No HTTP here: entrypoints map these to responses."""

from __future__ import annotations


class JitAccessError(Exception):
    """Base of every error jitaccess raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule


class NotFound(JitAccessError):
    code = "not-found"


class Unauthenticated(JitAccessError):
    code = "unauthenticated"


class Forbidden(JitAccessError):
    """The caller may not do this (not an approver, not the requester, not an admin)."""

    code = "forbidden"


class NotEligible(Forbidden):
    code = "not-eligible"


class SelfApproval(Forbidden):
    code = "self-approval"


class PolicyViolation(JitAccessError):
    """The ask breaks a rule of the role's policy; `rule` names it (e.g. duration.max)."""

    code = "policy-violation"


class InvalidInput(JitAccessError):
    """Bad input; `field` names the field, the message says why."""

    code = "invalid-input"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, rule=field)
        self.field = field


class RateLimited(JitAccessError):
    """Too many failed attempts (e.g. wrong MFA codes); try again after the lockout."""

    code = "rate-limited"


class Conflict(JitAccessError):
    """The object is no longer in a state where this makes sense (stale decision, double action)."""

    code = "conflict"


class PolicyInvalid(JitAccessError):
    """A policy document failed validation; `problems` lists every finding."""

    code = "policy-invalid"

    def __init__(self, problems: list[PolicyProblem]) -> None:
        super().__init__(
            f"{len(problems)} problem(s) in policy: " + "; ".join(str(p) for p in problems[:5])
        )
        self.problems = problems


class PolicyProblem:
    """One finding in a policy document: where (file, line, key path) and why."""

    def __init__(self, file: str, line: int, key: str, reason: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "key": self.key, "reason": self.reason}


class ConnectorError(JitAccessError):
    """A target refused or could not be reached; the worker retries."""

    code = "connector-error"


class AuditWriteFailed(JitAccessError):
    """The audit record could not be written, so the change it describes did not happen."""

    code = "audit-write-failed"


class Unavailable(JitAccessError):
    """The database cannot be reached."""

    code = "unavailable"
