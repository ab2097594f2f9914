"""`jitaccess token ...` and `jitaccess policy ...`: API tokens and policy as code, worked on the
database directly (server host), except `policy validate`, which only reads the files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from jitaccess.domain.errors import JitAccessError, PolicyInvalid
from jitaccess.entrypoints import cli_output as show
from jitaccess.entrypoints.cli_app import JsonOpt, _container, _domain_exit, policy_app, token_app
from jitaccess.entrypoints.cli_client import EXIT_USAGE, fail

if TYPE_CHECKING:
    from jitaccess.domain.policy import Policy

# --- tokens -----------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    principal: Annotated[str, typer.Option(help="The user or service the token acts as.")],
    description: Annotated[str, typer.Option(help="What the token is for.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; the secret is shown once and only its hash is kept."""
    from jitaccess.bootstrap import operator
    from jitaccess.services.manage_tokens import create_token

    container = _container()
    try:
        with container.uow() as uow:
            token, secret = create_token(
                uow,
                container.clock,
                principal=principal,
                created_by=operator(),
                description=description,
            )
    except JitAccessError as error:
        _domain_exit(error)
    if as_json:
        show.emit_json({"id": token.id, "principal": principal, "token": secret})
    else:
        show.out.print(f"token {token.id} for {principal} (shown once, keep it safe):")
        print(secret)


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke an API token."""
    from jitaccess.bootstrap import operator
    from jitaccess.services.manage_tokens import revoke_token

    container = _container()
    try:
        with container.uow() as uow:
            revoke_token(uow, container.clock, token_id=token_id, actor=operator())
    except JitAccessError as error:
        _domain_exit(error)
    show.out.print(f"token {token_id} revoked")


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """List API tokens (never their secrets)."""
    container = _container()
    with container.uow.readonly() as uow:
        tokens = uow.tokens.list()
    rows: list[dict[str, Any]] = [
        {
            "id": t.id,
            "principal": t.principal,
            "created_at": t.created_at.isoformat(),
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
            "description": t.description,
        }
        for t in tokens
    ]
    if as_json:
        show.emit_json(rows)
        return
    show.table(
        "Tokens",
        ["id", "principal", "created", "revoked", "description"],
        [
            [
                r["id"],
                r["principal"],
                show.when(r["created_at"]),
                show.when(r["revoked_at"]),
                r["description"],
            ]
            for r in rows
        ],
    )


# --- policy -----------------------------------------------------------------------------------


def _load(files: list[Path]) -> Policy:
    from jitaccess.adapters.policy_yaml import load_policy_files

    try:
        return load_policy_files(files)[0]
    except PolicyInvalid as error:
        _domain_exit(error)
    except OSError as error:
        fail(f"cannot read policy: {error}", EXIT_USAGE)


@policy_app.command("validate")
def policy_validate(files: list[Path]) -> None:
    """Check policy files; every problem names file, line and key."""
    policy = _load(files)
    show.out.print(
        f"valid: {len(policy.users)} users, {len(policy.targets)} targets, "
        f"{len(policy.roles)} roles, {len(policy.eligibility)} eligibility rows"
    )


@policy_app.command("plan")
def policy_plan(files: list[Path], as_json: JsonOpt = False) -> None:
    """Show what applying these files would add, change and remove."""
    from jitaccess.domain.policy_plan import plan_policy

    policy = _load(files)
    container = _container()
    with container.uow.readonly() as uow:
        current = uow.policies.current()
    changes = plan_policy(current.policy if current else None, policy)
    if as_json:
        show.emit_json(
            [
                {"action": c.action, "kind": c.kind, "name": c.name, "details": list(c.details)}
                for c in changes
            ]
        )
        return
    if not changes:
        show.out.print("no changes")
        return
    marks = {"add": "[green]+[/]", "change": "[yellow]~[/]", "remove": "[red]-[/]"}
    for change in changes:
        show.out.print(f"{marks[change.action]} {escape(change.kind)} {escape(change.name)}")
        for detail in change.details:
            show.out.print(f"    {escape(detail)}", highlight=False)
    counts = {a: sum(c.action == a for c in changes) for a in marks}
    show.out.print(
        f"plan: {counts['add']} to add, {counts['change']} to change, {counts['remove']} to remove"
    )


@policy_app.command("apply")
def policy_apply(files: list[Path]) -> None:
    """Apply policy files as a new version (atomic, versioned, audited)."""
    from jitaccess.bootstrap import apply_policy_files

    _load(files)
    container = _container()
    try:
        version = apply_policy_files(container, [str(f) for f in files])
    except JitAccessError as error:
        _domain_exit(error)
    if version is None:
        show.out.print("policy unchanged; nothing applied")
    else:
        show.out.print(f"applied policy version {version.version} ({version.digest[:12]})")
