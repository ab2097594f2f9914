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
