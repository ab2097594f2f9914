"""`jitaccess mfa ...`: enrol an authenticator app (QR code in the terminal), confirm it, see the
status, and (admins) reset someone's enrolment; each is one call to the server's API."""

from __future__ import annotations

import io
from typing import Annotated, Any

import httpx
import segno
import typer

from jitaccess.entrypoints import cli_output as show
from jitaccess.entrypoints.cli_app import JsonOpt, app
from jitaccess.entrypoints.cli_client import EXIT_UNAVAILABLE, Client, fail

mfa_app = typer.Typer(help="MFA step-up by TOTP.", no_args_is_help=True)
app.add_typer(mfa_app, name="mfa")


def qr_block(uri: str) -> str:
    """`uri` as a QR code of Unicode half blocks, two modules a line, for a terminal."""
    out = io.StringIO()
    segno.make_qr(uri).terminal(out=out, compact=True)
    return out.getvalue()


def _show_status(result: dict[str, Any]) -> None:
    if not result["enrolled"]:
        show.out.print("not enrolled: run `jitaccess mfa enroll`")
    elif not result["confirmed"]:
        show.out.print("enrolled, not confirmed yet: run `jitaccess mfa confirm CODE`")
    else:
        show.out.print("enrolled and confirmed")
    if result["locked_until"]:
        show.out.print(f"[bold red]locked[/] until {show.when(result['locked_until'])}")


@mfa_app.command("enroll")
def mfa_enroll(
    no_qr: Annotated[bool, typer.Option("--no-qr", help="Do not draw the QR code.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Get a TOTP secret for your authenticator app (shown once), then confirm it."""
    result = Client().call("POST", "/mfa/enroll")
    if as_json:
        show.emit_json(result)
        return
    show.out.print("Scan this with your authenticator app (shown once):")
    if not no_qr:
        print(qr_block(result["otpauth_uri"]), end="")
    print(result["otpauth_uri"])
    print(f"secret: {result['secret']}")
    show.out.print("confirm with: jitaccess mfa confirm CODE", highlight=False)


@mfa_app.command("confirm")
def mfa_confirm(
    code: Annotated[str, typer.Argument(help="The 6-digit code your app shows now.")],
    as_json: JsonOpt = False,
) -> None:
    """Confirm your enrolment with a first code from the app."""
    result = Client().call("POST", "/mfa/confirm", json={"code": code})
    show.emit_json(result) if as_json else _show_status(result)


@mfa_app.command("status")
def mfa_status(as_json: JsonOpt = False) -> None:
    """Whether you are enrolled and confirmed, and any lockout."""
    result = Client().call("GET", "/mfa")
    show.emit_json(result) if as_json else _show_status(result)


@mfa_app.command("reset")
def mfa_reset(
    user: Annotated[str, typer.Argument(help="Whose enrolment to delete.")],
) -> None:
    """Delete someone's enrolment (a lost phone) so they can enrol again (admins)."""
    client = Client()
    try:
        response = client.http.request("DELETE", f"/mfa/{user}")
    except httpx.HTTPError as error:
        fail(f"cannot reach {client.url}: {error}", EXIT_UNAVAILABLE)
    if response.status_code >= 400:
        # A 204 has no body for Client.call to decode; refusals read like every other command's.
        client._problem(response)
    show.out.print(f"MFA enrolment of {user} reset: they can enrol again")
