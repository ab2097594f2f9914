"""`jitaccess serve`: migrate, apply the policy file if it changed, start the worker, serve HTTP."""

from __future__ import annotations

import logging

import uvicorn
from sqlalchemy import text

from jitaccess.bootstrap import Container, apply_policy_files, upgrade
from jitaccess.entrypoints.worker import Worker

log = logging.getLogger("jitaccess")

# Several replicas may start at once with the same --policy: apply it one at a time, so the
# second sees the first's version and finds nothing to change.
_POLICY_LOCK = 7_291_456


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def prepare(container: Container, policy: list[str]) -> None:
    upgrade(container)
    if not policy:
        return
    if container.engine.dialect.name != "postgresql":
        _apply(container, policy)
        return
    with container.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _POLICY_LOCK})
        try:
            _apply(container, policy)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _POLICY_LOCK})
            conn.commit()


def _apply(container: Container, policy: list[str]) -> None:
    version = apply_policy_files(container, policy)
    if version is None:
        log.info("policy %s unchanged", ",".join(policy))
    else:
        log.info("applied policy version %s from %s", version.version, ",".join(policy))


def run_server(
    container: Container,
    *,
    host: str | None,
    port: int | None,
    policy: list[str],
    worker: bool,
) -> None:
    from jitaccess.entrypoints.api.app import create_app

    settings = container.settings
    configure_logging(settings.log_level)
    prepare(container, policy or settings.policy_files)
    background = Worker(container) if worker and settings.run_worker else None
    if background is not None:
        background.start()
    app = create_app(container)
    bind_host, bind_port = host or settings.host, port or settings.port
    log.info("jitaccess listening on http://%s:%s", bind_host, bind_port)
    try:
        uvicorn.run(
            app, host=bind_host, port=bind_port, log_level=settings.log_level, access_log=False
        )
    finally:
        if background is not None:
            background.shutdown()
        container.close()
