"""The `jitaccess` command. Server-host commands (serve, worker, db, token, policy apply/plan,
audit --db) work on the database directly; the others talk to the server's API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jitaccess.domain.errors import JitAccessError
from jitaccess.entrypoints import cli_output as show
from jitaccess.entrypoints.cli_app import (
    CommentOpt,
    JsonOpt,
    _container,
    _domain_exit,
    app,
    audit_app,
    db_app,
    policy_app,
    token_app,
)

__all__ = ["CommentOpt", "JsonOpt", "app", "audit_app", "db_app", "main", "policy_app", "token_app"]

# --- server -----------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (JITACCESS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (JITACCESS_PORT).")] = None,
    policy: Annotated[
        list[Path] | None, typer.Option(help="Policy file(s) applied at start.")
    ] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="API only.")] = False,
) -> None:
    """Run the API and the worker in one process."""
    from jitaccess.entrypoints.server import run_server

    container = _container()
    try:
        run_server(
            container,
            host=host,
            port=port,
            policy=[str(p) for p in policy or []],
            worker=not no_worker,
        )
    except JitAccessError as error:
        _domain_exit(error)


@app.command()
def worker() -> None:
    """Run the worker alone (expiries, provisioning, retries)."""
    from jitaccess.entrypoints.server import configure_logging
    from jitaccess.entrypoints.worker import run_worker

    container = _container()
    configure_logging(container.settings.log_level)
    run_worker(container)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Listen port.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its data.")] = Path(
        "var/demo"
    ),
) -> None:
    """Start a server with the demo policy and print demo tokens (what `make run` does)."""
    from jitaccess.entrypoints.demo import run_demo

    run_demo(port=port, data_dir=data_dir)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of JITACCESS_DATABASE_URL."""
    container = _container()
    show.out.print(f"database at {container.engine.url.render_as_string()} is up to date")


# The other commands register themselves on the apps when imported; importing them after the
# server commands keeps the order `jitaccess --help` lists them in.
from jitaccess.entrypoints import cli_access, cli_admin, cli_audit, cli_mfa, cli_targets  # noqa: E402, F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
