"""The Typer apps of the `jitaccess` command, their shared options, and the two helpers every
server-host command uses: the container from the settings, and the exit for a domain error.
The commands themselves live in `cli.py` (server), `cli_admin.py` (tokens, policy),
`cli_access.py` (requests, grants, check) and `cli_audit.py` (the audit trail)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from jitaccess.domain.errors import JitAccessError, PolicyInvalid
from jitaccess.entrypoints import cli_output as show
from jitaccess.entrypoints.cli_client import EXIT_REFUSED, EXIT_USAGE, exit_code_for, fail

if TYPE_CHECKING:
    from jitaccess.bootstrap import Container

app = typer.Typer(
    help="Just-in-time privileged access.", no_args_is_help=True, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="Database schema (server host).", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (server host).", no_args_is_help=True)
policy_app = typer.Typer(help="Policy as code.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
CommentOpt = Annotated[str, typer.Option("--comment", "-m", help="A comment for the record.")]


def _container() -> Container:
    from pydantic import ValidationError

    from jitaccess.bootstrap import build, upgrade
    from jitaccess.settings import Settings

    try:
        container = build(Settings())
    except ValidationError as error:
        problems = "; ".join(
            f"JITACCESS_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in error.errors()
        )
        fail(f"bad setting: {problems}", EXIT_USAGE)
    try:
        upgrade(container)  # a no-op when the schema is current
    except JitAccessError as error:
        _domain_exit(error)
    return container


def _domain_exit(error: JitAccessError) -> NoReturn:
    if isinstance(error, PolicyInvalid):
        for problem in error.problems:
            show.err_print(str(problem))
        fail(
            f"policy is invalid: {len(error.problems)} problem(s); nothing was changed",
            EXIT_REFUSED,
        )
    fail(error.message + (f" (rule: {error.rule})" if error.rule else ""), exit_code_for(error))
