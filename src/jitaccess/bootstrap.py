"""The only place that wires adapters into services: one `Container` per process."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from jitaccess.adapters.connectors.registry import ConnectorRegistry
from jitaccess.adapters.db.migrate import upgrade_database
from jitaccess.adapters.db.unit_of_work import SqlUnitOfWorkFactory, make_engine
from jitaccess.adapters.oncall import FileOnCall
from jitaccess.adapters.policy_yaml import load_policy_files, policy_digest, policy_to_document
from jitaccess.adapters.secret_box import FernetSecretBox
from jitaccess.adapters.wakeup import Wakeup
from jitaccess.clock import SystemClock
from jitaccess.domain.policy import Policy
from jitaccess.domain.policy_plan import plan_policy
from jitaccess.ports import Clock, PolicyVersion
from jitaccess.services.apply_policy import apply_policy
from jitaccess.settings import Settings


@dataclass
class Container:
    settings: Settings
    engine: Engine
    uow: SqlUnitOfWorkFactory
    clock: Clock
    connectors: ConnectorRegistry
    box: FernetSecretBox
    wake: Wakeup = field(default_factory=Wakeup)
    oncall: FileOnCall = field(default_factory=FileOnCall)

    def current_policy(self) -> Policy:
        with self.uow.readonly() as uow:
            version = uow.policies.current()
        return version.policy if version else Policy()

    def close(self) -> None:
        self.connectors.close()
        self.engine.dispose()


def build(settings: Settings | None = None, *, clock: Clock | None = None) -> Container:
    settings = settings or Settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    wake = Wakeup()
    container = Container(
        settings=settings,
        engine=engine,
        uow=SqlUnitOfWorkFactory(engine, on_wake=wake.ring),
        clock=clock or SystemClock(),
        connectors=ConnectorRegistry(),
        box=FernetSecretBox.from_file(settings.resolved_secret_key_file),
        wake=wake,
    )
    return container


def upgrade(container: Container) -> None:
    upgrade_database(container.engine)


def operator() -> str:
    """Who runs a server-host command, for the audit trail."""
    return f"host:{getpass.getuser()}"


def summarize_changes(old: Policy | None, new: Policy) -> list[str]:
    return [f"{c.action} {c.kind} {c.name}" for c in plan_policy(old, new)]


def apply_policy_files(
    container: Container, paths: list[str], *, actor: str | None = None
) -> PolicyVersion | None:
    """Load, validate and apply policy files; None when they equal the version in force."""
    policy, _source = load_policy_files([Path(p) for p in paths])
    with container.uow() as uow:
        return apply_policy(
            uow,
            container.clock,
            policy=policy,
            document=policy_to_document(policy),
            digest=policy_digest(policy),
            actor=actor or operator(),
            on_server_host=True,
            summarize=summarize_changes,
        )
