"""`jitaccess demo` (what `make run` does): a server on SQLite with the demo policy, demo tokens
printed, and a PostgreSQL target too when JITACCESS_DEMO_PG_URL names an admin connection."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from jitaccess.bootstrap import build
from jitaccess.entrypoints.server import prepare, run_server
from jitaccess.services.manage_tokens import create_token
from jitaccess.settings import Settings

DEMO_USERS = ("alice", "bob", "sam", "erin", "deploy-bot")


def demo_policy_files(data_dir: Path) -> list[str]:
    files = []
    names = ["policy.yaml"] + (
        ["policy-postgres.yaml"] if os.environ.get("JITACCESS_DEMO_PG_URL") else []
    )
    for name in names:
        path = data_dir / name
        path.write_text(resources.files("jitaccess.demo").joinpath(name).read_text())
        files.append(str(path))
    return files


def run_demo(*, port: int, data_dir: Path) -> None:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # The demo always uses its own SQLite file, whatever JITACCESS_DATABASE_URL says.
    settings = Settings(
        data_dir=data_dir, port=port, database_url=f"sqlite:///{data_dir / 'jitaccess.db'}"
    )
    container = build(settings)
    files = demo_policy_files(data_dir)
    prepare(container, files)
    tokens_file = data_dir / "tokens.env"
    if not tokens_file.exists():
        lines = []
        with container.uow() as uow:
            for name in DEMO_USERS:
                _, secret = create_token(
                    uow,
                    container.clock,
                    principal=name,
                    created_by="demo",
                    description="demo token",
                )
                lines.append(f"{name.upper().replace('-', '_')}_TOKEN={secret}")
        tokens_file.write_text("\n".join(lines) + "\n")
        tokens_file.chmod(0o600)
    url = f"http://{settings.host}:{port}"
    console = Console()
    console.print(
        Panel.fit(
            f"[bold]jitaccess demo[/] at [link={url}]{url}[/]  (docs: {url}/docs)\n"
            f"database: {settings.resolved_database_url}\n"
            f"demo tokens: {tokens_file}\n"
            "  (alice requests, bob approves, sam is an admin, erin audits)\n\n"
            f"  set -a; . {tokens_file}; set +a; export JITACCESS_URL={url}\n"
            "  JITACCESS_TOKEN=$ALICE_TOKEN .venv/bin/jitaccess request demo/read "
            "--for 15m -r 'look around'\n"
            "  JITACCESS_TOKEN=$ALICE_TOKEN .venv/bin/jitaccess request demo/admin --for 30m "
            "-r 'fix INC-42' --ticket INC-42\n"
            "  JITACCESS_TOKEN=$BOB_TOKEN   .venv/bin/jitaccess requests --to-approve\n"
            "  JITACCESS_TOKEN=$BOB_TOKEN   .venv/bin/jitaccess approve REQUEST_ID\n"
            "  JITACCESS_TOKEN=$ALICE_TOKEN .venv/bin/jitaccess grants\n"
            "  JITACCESS_TOKEN=$ALICE_TOKEN .venv/bin/jitaccess credentials GRANT_ID",
            title="ready",
        )
    )
    run_server(container, host=None, port=port, policy=[], worker=True)
