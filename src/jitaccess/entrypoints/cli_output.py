"""How the CLI shows things: Rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console()
_err = Console(stderr=True)


def err_print(message: str) -> None:
    _err.print(message, highlight=False, markup=False, soft_wrap=True)


_STATE_STYLE = {
    "pending": "yellow",
    "approved": "green",
    "denied": "red",
    "cancelled": "dim",
    "expired": "dim",
    "scheduled": "cyan",
    "activating": "yellow",
    "active": "bold green",
    "revoking": "yellow",
    "revoked": "red",
    "deactivated": "dim",
    "open": "bold red",
    "signed_off": "green",
}


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def when(value: str | None) -> str:
    """A timestamp as people read it: local-free UTC, plus how far away it is."""
    if not value:
        return "-"
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    delta = (at - datetime.now(UTC)).total_seconds()
    rel = _relative(abs(delta))
    return f"{at:%Y-%m-%d %H:%M:%S}Z ({'in ' + rel if delta > 0 else rel + ' ago'})"


def _relative(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def state(value: str) -> str:
    style = _STATE_STYLE.get(value, "")
    return f"[{style}]{value}[/]" if style else value


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*row)
    out.print(grid)


def show_requests(items: list[dict[str, Any]]) -> None:
    table(
        f"Requests ({len(items)})",
        ["id", "state", "requester", "roles", "for", "created", "approvals"],
        [
            [
                r["id"],
                state(r["state"]),
                r["requester"],
                ", ".join(r["roles"]),
                r["duration"],
                when(r["created_at"]),
                ", ".join(f"{a['approver']}:{a['decision']}" for a in r["approvals"]) or "-",
            ]
            for r in items
        ],
    )


def show_grants(items: list[dict[str, Any]]) -> None:
    table(
        f"Grants ({len(items)})",
        ["id", "state", "principal", "role", "starts", "ends", "note"],
        [
            [
                g["id"],
                state(g["state"]),
                g["principal"],
                g["role"],
                when(g["starts_at"]),
                when(g["ended_at"] or g["ends_at"]),
                ("[bold red]FLAGGED[/] " if g.get("flagged") else "") + (g.get("last_error") or ""),
            ]
            for g in items
        ],
    )


def show_preview(result: dict[str, Any]) -> None:
    """A dry run: what the request would need, as a table of stages."""
    verdict = {
        "granted": "[green]would activate at once[/]",
        "pending": "[yellow]would wait for approval[/]",
        "break-glass": "[bold red]would activate as BREAK-GLASS (alerted, reviewed)[/]",
    }[result["outcome"]]
    out.print(f"{', '.join(result['roles'])} for {result['duration']}: {verdict}")
    if result.get("mfa_required"):
        out.print("MFA: a TOTP code is required (--mfa-code)")
    for role, rule in sorted(result.get("auto_approved", {}).items()):
        out.print(f"auto-approval: {role} by rule [bold]{rule}[/]")
    if result["stages"]:
        table(
            "Approval stages",
            ["role", "stage", "needs", "who can decide", "escalates", "mfa"],
            [
                [
                    s["role"],
                    s["stage"],
                    f"{s['min_approvals']}" + (" (each group)" if s["all_groups"] else ""),
                    ", ".join(s["people"]) or "[red]nobody[/]",
                    f"after {s['escalate_after']} to {', '.join(s['escalate_to'])}"
                    if s["escalate_after"]
                    else "-",
                    "yes" if s["mfa"] else "-",
                ]
                for s in result["stages"]
            ],
        )


def show_reviews(items: list[dict[str, Any]]) -> None:
    table(
        f"Reviews ({len(items)})",
        ["id", "state", "who", "roles", "when", "justification", "signed off"],
        [
            [
                r["id"],
                state(r["state"]),
                r["principal"],
                ", ".join(r["roles"]),
                when(r["created_at"]),
                r["justification"],
                f"{r['signed_off_by']}: {r['comment']}" if r["signed_off_by"] else "-",
            ]
            for r in items
        ],
    )


def show_notifications(items: list[dict[str, Any]]) -> None:
    table(
        f"Notifications ({len(items)})",
        ["when", "kind", "about", "message"],
        [[when(n["created_at"]), n["kind"], n["subject"], n["message"]] for n in items],
    )
