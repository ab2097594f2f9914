"""An in-memory connector for tests and the demo: shared access per (principal, role).

It can be told to fail, to exercise the worker's retries, and it records every call.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess


class FakeConnector:
    per_grant_account = False

    def __init__(self, target: Target | None = None) -> None:
        self.target = target
        self.present: dict[str, Access] = {}  # account -> access that created it
        self.calls: list[tuple[str, str]] = []
        self.failing = False
        self._lock = threading.Lock()

    @classmethod
    def from_target(cls, target: Target) -> FakeConnector:
        return cls(target)

    @staticmethod
    def account(access: Access) -> str:
        return f"{access.principal}@{access.role}"

    def account_of(self, access: Access) -> str:
        return self.account(access)

    def provision(self, access: Access) -> Mapping[str, str] | None:
        with self._lock:
            self.calls.append(("provision", access.grant_id))
            if self.failing:
                raise ConnectorError("fake target is down")
            self.present[self.account(access)] = access
        return {"username": self.account(access), "token": secrets.token_urlsafe(16)}

    def revoke(self, access: Access) -> None:
        with self._lock:
            self.calls.append(("revoke", access.grant_id))
            if self.failing:
                raise ConnectorError("fake target is down")
            self.present.pop(self.account(access), None)

    def extend(self, access: Access) -> None:
        with self._lock:
            self.calls.append(("extend", access.grant_id))
            if self.failing:
                raise ConnectorError("fake target is down")
            if self.account(access) in self.present:
                self.present[self.account(access)] = access

    def has(self, principal: str, role: str) -> bool:
        with self._lock:
            return f"{principal}@{role}" in self.present

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        with self._lock:
            if self.failing:
                raise ConnectorError("fake target is down")
            # A copy under the lock, the listing outside it: with 100,000 accounts, building
            # it took the lock from provisions and revokes for a second.
            present = list(self.present.items())
        return [
            ExistingAccess(principal=a.principal, account=k, grant_id=a.grant_id or None)
            for k, a in present
        ]

    def remove(self, existing: ExistingAccess) -> None:
        with self._lock:
            self.calls.append(("remove", existing.account))
            if self.failing:
                raise ConnectorError("fake target is down")
            self.present.pop(existing.account, None)

    def plant(self, principal: str, role: str) -> str:
        """Create access behind jitaccess's back (for drift tests); returns the account."""
        account = f"{principal}@{role}"
        with self._lock:
            self.present[account] = Access(
                grant_id="",
                principal=principal,
                role=role,
                target=self.target.name if self.target else "",
                grants={},
                starts_at=datetime.min.replace(tzinfo=UTC),
                ends_at=datetime.max.replace(tzinfo=UTC),
            )
        return account

    def check(self) -> None:
        if self.failing:
            raise ConnectorError("fake target is down")


class FakeConnectors:
    """The Connectors port with one FakeConnector per target name, made on first use."""

    def __init__(self, *, per_grant_account: bool = False) -> None:
        self.connectors: dict[str, FakeConnector] = {}
        self._per_grant_account = per_grant_account

    def for_target(self, target: Target) -> FakeConnector:
        return self.connectors.setdefault(target.name, FakeConnector(target))

    def per_grant_account(self, target: Target) -> bool:
        return self._per_grant_account

    def required_params(self, target: Target) -> tuple[str, ...]:
        return ()

    def param_problems(self, target: Target, params: Mapping[str, str]) -> list[tuple[str, str]]:
        return []
