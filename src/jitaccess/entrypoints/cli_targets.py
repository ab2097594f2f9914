"""The commands for targets (targets, drift, reconcile): each is one call to the server's API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from jitaccess.entrypoints import cli_output as show
from jitaccess.entrypoints.cli_app import JsonOpt, app
from jitaccess.entrypoints.cli_client import Client


@app.command()
def targets(
    check: Annotated[bool, typer.Option("--check", help="Run every health check now.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Each target: connector, last health check and error, open drift (admins, auditors)."""
    result = Client().call("GET", "/targets", params={"check": "true"} if check else None)
    if as_json:
        show.emit_json(result)
        return
    show.table(
        f"Targets ({len(result['items'])})",
        ["name", "type", "health", "checked", "reconciled", "open drift", "drift action"],
        [
            [
                t["name"],
                t["type"],
                _health(t),
                show.when(t["checked_at"]),
                show.when(t["reconciled_at"]),
                f"[bold red]{t['open_drift']}[/]" if t["open_drift"] else "0",
                t["drift"],
            ]
            for t in result["items"]
        ],
    )


def _health(target: dict[str, Any]) -> str:
    if target["ok"] is None:
        return "[dim]not checked yet[/]"
    return "[green]ok[/]" if target["ok"] else f"[bold red]error[/] {target['error']}"


@app.command()
def drift(
    state: Annotated[str, typer.Option(help="open, removed, repaired or gone.")] = "open",
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Access in the targets that no grant explains, and grants whose access went missing."""
    params = {"state": state} | ({"target": target} if target else {})
    result = Client().call("GET", "/drift", params=params)
    if as_json:
        show.emit_json(result)
        return
    show.table(
        f"Drift ({len(result['items'])}, {state})",
        ["target", "kind", "account", "principal", "first seen", "last seen", "state"],
        [
            [
                f["target"],
                f["kind"],
                f["account"],
                f["principal"] or "-",
                show.when(f["found_at"]),
                show.when(f["last_seen_at"]),
                f["state"],
            ]
            for f in result["items"]
        ],
    )


@app.command()
def reconcile(
    target: Annotated[
        list[str] | None, typer.Option("--target", "-t", help="Only this target (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the targets with the grants now; remove drift where the target says so."""
    result = Client().call("POST", "/reconcile", params={"target": target} if target else None)
    if as_json:
        show.emit_json(result)
        return
    show.table(
        "Reconcile",
        ["target", "listed", "unexplained", "removed", "missing (re-provisioned)", "status"],
        [
            [
                t["target"],
                str(t["listed"]),
                ", ".join(t["unexplained"]) or "0",
                ", ".join(t["removed"]) or "0",
                ", ".join(t["missing"]) or "0",
                "skipped (cannot list)"
                if t["skipped"]
                else ("[green]ok[/]" if t["ok"] else f"[red]{t['error']}[/]"),
            ]
            for t in result["targets"]
        ],
    )
