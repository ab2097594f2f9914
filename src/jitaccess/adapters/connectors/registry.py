"""Finds the connector for each target: built-in and third-party connectors register through
the `jitaccess.connectors` entry-point group; a class there needs `from_target(target)`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, cast

from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Connector

GROUP = "jitaccess.connectors"
log = logging.getLogger(__name__)


class ConnectorClass(Protocol):
    per_grant_account: bool

    def from_target(self, target: Target) -> Connector: ...


def connector_types() -> dict[str, ConnectorClass]:
    """Every installed connector type. One that fails to import is left out and logged, so a
    broken plugin stops only the targets of its own type (they fail with a clear error)."""
    found: dict[str, ConnectorClass] = {}
    for ep in entry_points(group=GROUP):
        try:
            found[ep.name] = cast(ConnectorClass, ep.load())
        except Exception as error:
            log.error("connector type %r (%s) cannot be loaded: %s", ep.name, ep.value, error)
    return found


class ConnectorRegistry:
    """One connector instance per target definition, made on first use and kept."""

    def __init__(self) -> None:
        self._types = connector_types()
        self._instances: dict[Target, Connector] = {}
        self._lock = threading.Lock()

    def register(self, name: str, cls: Any) -> None:
        self._types[name] = cls

    def _type(self, target: Target) -> ConnectorClass:
        cls = self._types.get(target.type)
        if cls is None:
            raise ConnectorError(
                f"target {target.name}: no connector of type {target.type!r} is installed "
                f"(known: {', '.join(sorted(self._types))})"
            )
        return cls

    def for_target(self, definition: Target) -> Connector:
        with self._lock:
            instance = self._instances.get(definition)
            if instance is None:
                instance = self._type(definition).from_target(definition)
                self._instances[definition] = instance
            return instance

    def per_grant_account(self, target: Target) -> bool:
        """The class's answer, or its `per_grant_account_for(target)` when the target's options
        decide (a webhook or command target with `shared: true`)."""
        cls = self._type(target)
        hook = getattr(cls, "per_grant_account_for", None)
        return bool(hook(target)) if callable(hook) else bool(cls.per_grant_account)

    def required_params(self, target: Target) -> tuple[str, ...]:
        return tuple(getattr(self._type(target), "required_params", ()))

    def param_problems(self, target: Target, params: Mapping[str, str]) -> list[tuple[str, str]]:
        check = getattr(self._type(target), "param_problems", None)
        return list(check(params)) if callable(check) else []

    def types(self) -> dict[str, ConnectorClass]:
        return dict(self._types)

    def close(self) -> None:
        with self._lock:
            for instance in self._instances.values():
                close = getattr(instance, "close", None)
                if callable(close):
                    close()
            self._instances.clear()
