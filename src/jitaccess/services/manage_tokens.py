"""Use cases on API tokens: create (secret shown once, only its hash kept), revoke, authenticate."""

from __future__ import annotations

import hashlib
import secrets

from jitaccess.domain.errors import InvalidInput, NotFound, Unauthenticated
from jitaccess.domain.model import new_id
from jitaccess.ports import ApiToken, Clock, UnitOfWork
from jitaccess.services.context import audit

TOKEN_PREFIX = "jit_"


def hash_token(secret: str) -> str:
    # Tokens carry 256 random bits, so a plain SHA-256 is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    uow: UnitOfWork, clock: Clock, *, principal: str, created_by: str, description: str = ""
) -> tuple[ApiToken, str]:
    if not principal or len(principal) > 64 or ":" in principal:
        raise InvalidInput("principal must be a user or service name", field="principal")
    now = clock.now()
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=new_id("tok"),
        principal=principal,
        token_hash=hash_token(secret),
        created_at=now,
        created_by=created_by,
        description=description,
    )
    uow.tokens.add(token)
    audit(
        uow,
        now,
        created_by,
        "token.created",
        token.id,
        data={"principal": principal, "description": description},
    )
    uow.commit()
    return token, secret


def revoke_token(uow: UnitOfWork, clock: Clock, *, token_id: str, actor: str) -> ApiToken:
    now = clock.now()
    token = uow.tokens.get(token_id)
    if token is None:
        raise NotFound(f"no token {token_id}")
    if token.revoked_at is None:
        token = ApiToken(**{**token.__dict__, "revoked_at": now})
        uow.tokens.save(token)
        audit(uow, now, actor, "token.revoked", token.id, data={"principal": token.principal})
        uow.commit()
    return token


def authenticate(uow: UnitOfWork, secret: str) -> str:
    """The principal a bearer token stands for; Unauthenticated otherwise."""
    if not secret.startswith(TOKEN_PREFIX):
        raise Unauthenticated("not a jitaccess token")
    token = uow.tokens.find(hash_token(secret))
    if token is None or token.revoked_at is not None:
        raise Unauthenticated("unknown or revoked token")
    return token.principal
