"""The baseline for GET /api/v1/check: a bare FastAPI endpoint of the same shape, served by
uvicorn exactly as `jitaccess serve` serves the real app.

It reads the bearer token from the Authorization header, runs ONE indexed SELECT on the same
database (the token's hash joined to the caller's live grants of the role, through the same
engine set-up jitaccess uses), and answers with the same JSON fields. No middleware, no
dependency injection beyond the query parameters, no response model.

`python -m bench.bare_check --database-url URL --port PORT`
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException
from sqlalchemy import String, text

from jitaccess.adapters.db.tables import UTCDateTime
from jitaccess.adapters.db.unit_of_work import make_engine

# The state and the window are checked in Python, as `check_access` does: with `g.state =
# 'active'` in the join, SQLite (no statistics) walks ix_grants_state, every active grant.
QUERY = text(
    "SELECT t.principal, g.id, g.state, g.starts_at, g.ends_at FROM api_tokens t "
    "LEFT JOIN grants g ON g.principal = t.principal AND g.role = :role "
    "WHERE t.token_hash = :token_hash AND t.revoked_at IS NULL"
).columns(principal=String, id=String, state=String, starts_at=UTCDateTime, ends_at=UTCDateTime)


def create_app(database_url: str) -> FastAPI:
    engine = make_engine(database_url)
    app = FastAPI()

    @app.get("/api/v1/check")
    def check(role: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401)
        token_hash = hashlib.sha256(authorization[7:].encode()).hexdigest()
        now = datetime.now(UTC)
        with engine.connect().execution_options(jit_readonly=True) as conn:
            rows = conn.execute(QUERY, {"role": role, "token_hash": token_hash}).all()
        if not rows:
            raise HTTPException(401)
        live = [
            (row.id, row.ends_at)
            for row in rows
            if row.id is not None and row.state == "active" and row.starts_at <= now < row.ends_at
        ]
        until = max((ends_at for _, ends_at in live), default=None)
        return {
            "principal": rows[0].principal,
            "role": role,
            "active": bool(live),
            "until": until.isoformat() if until else None,
            "grants": [grant_id for grant_id, _ in live],
        }

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_check", description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.database_url),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
