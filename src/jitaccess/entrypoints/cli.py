"""The `jitaccess` command. Server-host commands (serve, worker, db, token, policy apply/plan,
audit --db) work on the database directly; the others talk to the server's API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from jitaccess.domain.errors import JitAccessError, PolicyInvalid
from jitaccess.entrypoints import cli_output as show
from jitaccess.entrypoints.cli_client import (
    EXIT_ERROR,
    EXIT_REFUSED,
    EXIT_USAGE,
    Client,
    exit_code_for,
    fail,
)

if TYPE_CHECKING:
    from jitaccess.bootstrap import Container
    from jitaccess.domain.policy import Policy

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


# --- requests and grants (through the API) -----------------------------------------------------


@app.command("request")
def request_cmd(
    roles: list[str],
    duration: Annotated[
        str | None, typer.Option("--for", help="How long, e.g. 30m, 4h, PT1H.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Justification.")] = "",
    ticket: Annotated[str | None, typer.Option(help="Ticket reference.")] = None,
    start_at: Annotated[str | None, typer.Option(help="Scheduled start, ISO 8601 UTC.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what it would need.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask for one or more roles."""
    body = {
        "roles": roles,
        "duration": duration,
        "justification": reason,
        "ticket": ticket,
        "start_at": start_at,
    }
    result = Client().call("POST", "/requests", json=body, params={"dry_run": str(dry_run).lower()})
    if as_json:
        show.emit_json(result)
    elif dry_run:
        show.out.print(f"would ask for {', '.join(result['roles'])} for {result['duration']}")
        if not result["needs_approval"]:
            show.out.print("no approval needed: it would activate at once")
        for stage in result["stages"]:
            show.out.print(
                f"  {stage['role']}: stage {stage['stage']} needs "
                f"{stage['min_approvals']} of {', '.join(stage['approvers'])}"
            )
    else:
        show.show_requests([result])


def _decide(action: str, request_id: str, comment: str, as_json: bool) -> None:
    result = Client().call("POST", f"/requests/{request_id}/{action}", json={"comment": comment})
    show.emit_json(result) if as_json else show.show_requests([result])


@app.command()
def approve(request_id: str, comment: CommentOpt = "", as_json: JsonOpt = False) -> None:
    """Approve a pending request."""
    _decide("approve", request_id, comment, as_json)


@app.command()
def deny(request_id: str, comment: CommentOpt = "", as_json: JsonOpt = False) -> None:
    """Deny a pending request."""
    _decide("deny", request_id, comment, as_json)


@app.command()
def cancel(request_id: str, comment: CommentOpt = "", as_json: JsonOpt = False) -> None:
    """Cancel your own pending request."""
    _decide("cancel", request_id, comment, as_json)


@app.command()
def requests(
    state: Annotated[str | None, typer.Option(help="Only this state.")] = None,
    to_approve: Annotated[bool, typer.Option("--to-approve", help="Ones you can decide.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List requests you may see."""
    params: dict[str, Any] = {"to_approve": str(to_approve).lower()}
    if state:
        params["state"] = state
    items = Client().call("GET", "/requests", params=params)["items"]
    show.emit_json(items) if as_json else show.show_requests(items)


@app.command()
def grants(
    state: Annotated[str | None, typer.Option(help="Only this state.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List grants you may see (flagged ones are marked)."""
    items = Client().call("GET", "/grants", params={"state": state} if state else {})["items"]
    show.emit_json(items) if as_json else show.show_grants(items)


@app.command()
def extend(
    grant_id: str,
    duration: Annotated[str, typer.Option("--for", help="How much longer, e.g. 30m.")],
    reason: Annotated[str, typer.Option("--reason", "-r")] = "",
    ticket: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    """Extend a live grant (within the role's max; may need approval)."""
    body = {"duration": duration, "justification": reason, "ticket": ticket}
    result = Client().call("POST", f"/grants/{grant_id}/extend", json=body)
    if as_json:
        show.emit_json(result)
    elif result["pending_approval"]:
        show.out.print(f"extension request {result['request']['id']} awaits approval")
    else:
        show.show_grants([result["grant"]])


@app.command()
def deactivate(grant_id: str, comment: CommentOpt = "", as_json: JsonOpt = False) -> None:
    """End your own grant now."""
    result = Client().call("POST", f"/grants/{grant_id}/deactivate", json={"comment": comment})
    show.emit_json(result) if as_json else show.show_grants([result])


@app.command()
def revoke(
    grant_id: str,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (required).")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke anyone's grant (admins)."""
    result = Client().call("POST", f"/grants/{grant_id}/revoke", json={"reason": reason})
    show.emit_json(result) if as_json else show.show_grants([result])


@app.command()
def credentials(grant_id: str, as_json: JsonOpt = False) -> None:
    """Fetch a grant's credentials; they are handed out once."""
    result = Client().call("GET", f"/grants/{grant_id}/credentials")
    if as_json:
        show.emit_json(result)
        return
    for key, value in result.items():
        print(f"{key}: {value}")


@app.command()
def check(
    role: Annotated[str, typer.Option(help="Role name.")],
    principal: Annotated[str | None, typer.Option(help="Defaults to you.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Is this access active now, and until when? Exit 0 if active, 3 if not."""
    params = {"role": role, **({"principal": principal} if principal else {})}
    result = Client().call("GET", "/check", params=params)
    if as_json:
        show.emit_json(result)
    else:
        verdict = f"active until {show.when(result['until'])}" if result["active"] else "not active"
        show.out.print(f"{result['principal']} / {result['role']}: {verdict}")
    if not result["active"]:
        sys.exit(EXIT_REFUSED)


# --- audit ------------------------------------------------------------------------------------

DbOpt = Annotated[bool, typer.Option("--db", help="Read the database directly (server host).")]


def _audit_records(db: bool, after: int, limit: int) -> list[dict[str, Any]]:
    from jitaccess.audit.chain import record_to_dict

    if db:
        container = _container()
        with container.uow.readonly() as uow:
            return [record_to_dict(r) for r in uow.audit.records(after=after, limit=limit)]
    items: list[dict[str, Any]] = Client().call(
        "GET", "/audit", params={"after": after, "limit": limit}
    )["items"]
    return items


@audit_app.command("tail")
def audit_tail(
    lines: Annotated[int, typer.Option("-n", help="How many records.")] = 20,
    db: DbOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The newest audit records."""
    if db:
        from jitaccess.audit.chain import record_to_dict

        container = _container()
        with container.uow.readonly() as uow:
            items = [record_to_dict(r) for r in uow.audit.last(lines)]
    else:
        items = Client().call("GET", "/audit", params={"tail": lines})["items"]
    if as_json:
        show.emit_json(items)
        return
    show.table(
        "Audit",
        ["seq", "at", "actor", "action", "subject", "outcome", "comment"],
        [
            [
                str(r["seq"]),
                r["at"],
                r["actor"],
                r["action"],
                r["subject"],
                r["outcome"],
                r.get("comment") or "",
            ]
            for r in items
        ],
    )


@audit_app.command("verify")
def audit_verify(
    db: DbOpt = False,
    file: Annotated[Path | None, typer.Option(help="Verify a JSONL export offline.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the hash chain; exit 0 if intact, 1 naming the first bad record."""
    from jitaccess.audit.chain import record_from_dict, verify
    from jitaccess.services.verify_audit import verify_audit

    if file is not None:
        with file.open() as handle:
            result = verify(record_from_dict(json.loads(line)) for line in handle if line.strip())
        report = result.as_dict()
    elif db:
        container = _container()
        with container.uow.readonly() as uow:
            report = verify_audit(uow).as_dict()
    else:
        report = Client().call("GET", "/audit/verify")
    if as_json:
        show.emit_json(report)
    elif report["ok"]:
        show.out.print(
            f"audit chain intact: {report['records']} records, head {report['head'][:16]}"
        )
    else:
        show.out.print(
            f"[bold red]audit chain broken at record {report['first_bad_seq']}[/]: "
            f"{report['reason']}"
        )
    if not report["ok"]:
        sys.exit(EXIT_ERROR)


@audit_app.command("export")
def audit_export(
    fmt: Annotated[str, typer.Option("--format", help="Only jsonl.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    db: DbOpt = False,
) -> None:
    """Export the whole trail, one JSON record per line, verifiable offline."""
    if fmt != "jsonl":
        fail("--format: only jsonl is supported", EXIT_USAGE)
    handle = output.open("w") if output else sys.stdout
    after, count = 0, 0
    while True:
        page = _audit_records(db, after, 1000)
        for record in page:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        count += len(page)
        if len(page) < 1000:
            break
        after = page[-1]["seq"]
    if output:
        handle.close()
        show.err_print(f"exported {count} records to {output}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
