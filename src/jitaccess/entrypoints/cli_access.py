"""The commands for requests and grants (request, approve, deny, cancel, requests, grants, extend,
deactivate, revoke, credentials, check): each is one call to the server's API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from jitaccess.entrypoints import cli_output as show
from jitaccess.entrypoints.cli_app import CommentOpt, JsonOpt, app
from jitaccess.entrypoints.cli_client import EXIT_REFUSED, EXIT_USAGE, Client, fail

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
    partial: Annotated[
        bool, typer.Option("--partial", help="Grant the roles approved even if others are denied.")
    ] = False,
    break_glass: Annotated[
        bool,
        typer.Option("--break-glass", help="Emergency: no approval; everyone is alerted."),
    ] = False,
    mfa_code: MfaOpt = None,
    ssh_key: Annotated[
        Path | None,
        typer.Option("--ssh-key", help="Your SSH public key file (ssh targets sign it)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask for one or more roles."""
    body = {
        "roles": roles,
        "duration": duration,
        "justification": reason,
        "ticket": ticket,
        "start_at": start_at,
        "partial": partial,
        "break_glass": break_glass,
        "mfa_code": mfa_code,
    }
    if ssh_key is not None:
        try:
            text = ssh_key.read_text(encoding="utf-8").strip()
            if "PRIVATE KEY" in text:
                fail(f"--ssh-key {ssh_key} is a private key: give the .pub file", EXIT_USAGE)
            body["ssh_public_key"] = text
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read --ssh-key {ssh_key}: {exc}", EXIT_USAGE)
    result = Client().call("POST", "/requests", json=body, params={"dry_run": str(dry_run).lower()})
    if as_json:
        show.emit_json(result)
    elif dry_run:
        show.show_preview(result)
    else:
        show.show_requests([result])
        if result.get("break_glass"):
            show.out.print("[bold red]break-glass:[/] approvers and admins have been alerted")


MfaOpt = Annotated[
    str | None, typer.Option("--mfa-code", help="A TOTP code, where the policy requires MFA.")
]


def _decide(
    action: str, request_id: str, comment: str, as_json: bool, mfa_code: str | None = None
) -> None:
    body = {"comment": comment} | ({"mfa_code": mfa_code} if mfa_code else {})
    result = Client().call("POST", f"/requests/{request_id}/{action}", json=body)
    show.emit_json(result) if as_json else show.show_requests([result])


@app.command()
def approve(
    request_id: str, comment: CommentOpt = "", mfa_code: MfaOpt = None, as_json: JsonOpt = False
) -> None:
    """Approve a pending request."""
    _decide("approve", request_id, comment, as_json, mfa_code)


@app.command()
def deny(
    request_id: str, comment: CommentOpt = "", mfa_code: MfaOpt = None, as_json: JsonOpt = False
) -> None:
    """Deny a pending request."""
    _decide("deny", request_id, comment, as_json, mfa_code)


@app.command()
def cancel(request_id: str, comment: CommentOpt = "", as_json: JsonOpt = False) -> None:
    """Cancel your own pending request."""
    _decide("cancel", request_id, comment, as_json)


@app.command()
def reviews(
    state: Annotated[str | None, typer.Option(help="open or signed_off.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Post-incident reviews of break-glass activations."""
    result = Client().call("GET", "/reviews", params={"state": state} if state else None)
    show.emit_json(result) if as_json else show.show_reviews(result["items"])


@app.command("sign-off")
def sign_off(
    review_id: str,
    comment: Annotated[str, typer.Option("--comment", "-m", help="What the review found.")],
    as_json: JsonOpt = False,
) -> None:
    """Sign off a break-glass review (an approver of its roles or an admin)."""
    result = Client().call("POST", f"/reviews/{review_id}/sign-off", json={"comment": comment})
    show.emit_json(result) if as_json else show.show_reviews([result])


@app.command()
def notifications(
    since: Annotated[str | None, typer.Option(help="Only at or after this ISO 8601 time.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Your inbox: approvals you are asked for, escalations, decisions, break-glass alerts."""
    result = Client().call("GET", "/notifications", params={"since": since} if since else None)
    show.emit_json(result) if as_json else show.show_notifications(result["items"])


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
    mfa_code: MfaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Extend a live grant (within the role's max; may need approval)."""
    body = {"duration": duration, "justification": reason, "ticket": ticket}
    if mfa_code:
        body["mfa_code"] = mfa_code
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
