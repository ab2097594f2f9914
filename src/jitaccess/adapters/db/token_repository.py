"""API tokens over SQLAlchemy Core: only the hash of a token's secret is kept."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import Connection, Row, select, update

from jitaccess.adapters.db.tables import api_tokens
from jitaccess.ports import ApiToken


def _token_from(row: Row[Any]) -> ApiToken:
    return ApiToken(**dict(row._mapping))


class SqlTokens:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, token: ApiToken) -> None:
        self.conn.execute(api_tokens.insert().values(**token.__dict__))

    def find(self, token_hash: str) -> ApiToken | None:
        row = self.conn.execute(
            select(api_tokens).where(api_tokens.c.token_hash == token_hash)
        ).first()
        return _token_from(row) if row else None

    def get(self, token_id: str) -> ApiToken | None:
        row = self.conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).first()
        return _token_from(row) if row else None

    def save(self, token: ApiToken) -> None:
        values = dict(token.__dict__)
        del values["id"]
        self.conn.execute(update(api_tokens).where(api_tokens.c.id == token.id).values(**values))

    def list(self, principal: str | None = None) -> builtins.list[ApiToken]:
        query = select(api_tokens).order_by(api_tokens.c.created_at)
        if principal is not None:
            query = query.where(api_tokens.c.principal == principal)
        return [_token_from(r) for r in self.conn.execute(query)]
