"""A target program for the `command` connector whose changes wait at gates a test opens, so a
test can put two workers' calls for one grant in a chosen order.

It keeps its access as `jit_` roles in a real PostgreSQL (the DSN arrives as JITACCESS_SECRET,
from the target's `connection`), and reports what it does as files in GATE_DIR:
`<grant>.<event>.started` (holding the worker's pid); `<event>.fails` makes that event exit 1
there, having done nothing; `<grant>.<event>.made` once the role is made or dropped;
`<grant>.<event>.done` as it exits 0. If `<event>.gated` exists, it waits for
`<grant>.<event>.go`: a provision before it makes the role, a revoke after it dropped it.

Run as `python gated_target.py` with the event on stdin (docs/connectors.md, "command").
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

GATE_TIMEOUT = 30.0


def main() -> int:
    event = json.load(sys.stdin)
    kind = str(event["event"])
    if kind not in ("provision", "revoke"):
        return 0  # check, extend: nothing to do; the target sets `list: false`
    gates = Path(os.environ["GATE_DIR"])
    grant = str(event["grant_id"])
    account = str(event["account"])
    (gates / f"{grant}.{kind}.started").write_text(str(os.getppid()))
    if (gates / f"{kind}.fails").exists():
        print(f"{kind} of {account} failed on purpose", file=sys.stderr)
        return 1
    # A provision waits before it makes the role; a revoke after it made sure the role is gone:
    # each is "in flight" while it waits, as a slow target call would be.
    if kind == "provision":
        _wait(gates, grant, kind)
    with psycopg.connect(os.environ["JITACCESS_SECRET"], autocommit=True) as conn:
        role = sql.Identifier(account)
        if kind == "provision":
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [account])
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
        else:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    (gates / f"{grant}.{kind}.made").touch()
    if kind == "revoke":
        _wait(gates, grant, kind)
    (gates / f"{grant}.{kind}.done").touch()
    return 0


def _wait(gates: Path, grant: str, kind: str) -> None:
    if not (gates / f"{kind}.gated").exists():
        return
    deadline = time.monotonic() + GATE_TIMEOUT
    while not (gates / f"{grant}.{kind}.go").exists():
        if time.monotonic() > deadline:
            sys.exit(f"gate {grant}.{kind}.go never opened")
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
