"""`jitaccess audit ...`: tail, verify and export the hash-chained audit trail, through the API
or, with --db, from the database directly (server host)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from jitaccess.entrypoints import cli_output as show
from jitaccess.entrypoints.cli_app import JsonOpt, _container, audit_app
from jitaccess.entrypoints.cli_client import EXIT_ERROR, EXIT_USAGE, Client, fail

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
