"""API tokens over SQLAlchemy Core: only the hash of a token's secret is kept.

Statements are built once, at import: every authenticated API call looks a token up, and a
statement built per call costs SQLAlchemy a fresh cache key each time."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select, update

from jitaccess.adapters.db.tables import api_tokens
from jitaccess.ports import ApiToken

# "b_id", not "id": a bound parameter may not share its name with a column being SET.
_INSERT = api_tokens.insert()
_FIND = select(api_tokens).where(api_tokens.c.token_hash == bindparam("b_hash"))
_GET = select(api_tokens).where(api_tokens.c.id == bindparam("b_id"))
_UPDATE = update(api_tokens).where(api_tokens.c.id == bindparam("b_id"))
_LIST = select(api_tokens).order_by(api_tokens.c.created_at)
_LIST_OF = _LIST.where(api_tokens.c.principal == bindparam("b_principal"))


def _token_from(row: Row[Any]) -> ApiToken:
    return ApiToken(**row._mapping)


class SqlTokens:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, token: ApiToken) -> None:
        self.conn.execute(_INSERT, dict(token.__dict__))

    def find(self, token_hash: str) -> ApiToken | None:
        row = self.conn.execute(_FIND, {"b_hash": token_hash}).first()
        return _token_from(row) if row else None

    def get(self, token_id: str) -> ApiToken | None:
        row = self.conn.execute(_GET, {"b_id": token_id}).first()
        return _token_from(row) if row else None

    def save(self, token: ApiToken) -> None:
        values = dict(token.__dict__)
        values["b_id"] = values.pop("id")
        self.conn.execute(_UPDATE, values)

    def list(self, principal: str | None = None) -> builtins.list[ApiToken]:
        if principal is None:
            rows = self.conn.execute(_LIST)
        else:
            rows = self.conn.execute(_LIST_OF, {"b_principal": principal})
        return [_token_from(r) for r in rows]
