"""Who is calling: the principal behind `Authorization: Bearer <token>`, and reader checks.

The token is looked up where the route runs: a route of `RequestRoute` gets its `Principal`
in its own worker thread, just before its body, in the request's read-only unit of work, which
a reading route then goes on using. One threadpool hop and one pool checkout a request, where
a sync dependency would cost a hop of its own. It still comes first: an error answered before
the route ran (invalid input, say) is a 401 problem if the token is bad, as when the lookup was
a dependency of its own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from jitaccess.domain.errors import Forbidden, Unauthenticated
from jitaccess.entrypoints.api.dependencies import RequestReader, request_reader
from jitaccess.entrypoints.api.problems import CALLER_KEY
from jitaccess.ports import UnitOfWork
from jitaccess.services.context import current_policy
from jitaccess.services.manage_tokens import authenticate

bearer = HTTPBearer(
    auto_error=False,
    description="An API token made with `jitaccess token create`.",
)


class Caller:
    """A request's bearer token, not looked up yet."""

    def __init__(self, reader: RequestReader, secret: str) -> None:
        self.reader = reader
        self.secret = secret
        self.pending = True

    def authenticate(self) -> str:
        """The principal, from the request's reader (in the route's worker thread)."""
        self.pending = False
        return authenticate(self.reader.open(), self.secret)

    def authenticate_alone(self) -> str:
        """The principal, from a reader of its own: where the request's reader is not at hand
        (an error answered before the route ran, see `problems.authenticated_first`)."""
        self.pending = False
        with self.reader.factory.readonly() as uow:
            return authenticate(uow, self.secret)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str | Caller:
    """The authenticated principal; 401 problem when the token is missing, unknown or revoked."""
    if credentials is None:
        raise Unauthenticated("send an API token as `Authorization: Bearer <token>`")
    caller = Caller(request_reader(request), credentials.credentials)
    if not isinstance(request.scope.get("route"), RequestRoute):
        # Not a route that looks it up itself: now, in a hop of its own.
        return await run_in_threadpool(caller.authenticate_alone)
    request.scope[CALLER_KEY] = caller
    return caller


# A route of `RequestRoute` receives the principal's name, authenticated.
Principal = Annotated[str, Depends(current_principal)]


class RequestRoute(APIRoute):
    """A sync route whose `Principal` and `ReaderDep` are resolved in its own worker thread,
    just before its body: the token looked up, the request's read-only unit of work opened
    (and closed when the route returns)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, _in_request_scope(endpoint), **kwargs)


def _in_request_scope(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(endpoint):
        raise TypeError(f"{endpoint.__name__}: a RequestRoute runs a sync function")

    @functools.wraps(endpoint)
    def run(**values: Any) -> Any:
        callers = [name for name, value in values.items() if isinstance(value, Caller)]
        readers = [name for name, value in values.items() if isinstance(value, RequestReader)]
        opened = [values[name] for name in readers] + [values[name].reader for name in callers]
        try:
            for name in callers:
                values[name] = values[name].authenticate()
            if not readers:
                # Authenticated; a route that writes holds no reader while it does.
                for reader in opened:
                    reader.close()
            for name in readers:
                values[name] = values[name].open()
            return endpoint(**values)
        finally:
            for reader in opened:
                reader.close()

    return run


def require_reader(uow: UnitOfWork, principal: str) -> None:
    """Only admins and auditors read everything (the audit log, other people's access)."""
    if not current_policy(uow).policy.can_read_everything(principal):
        raise Forbidden("only admins and auditors can read this", rule="not-an-admin-or-auditor")


def require_admin(uow: UnitOfWork, principal: str) -> None:
    if not current_policy(uow).policy.is_admin(principal):
        raise Forbidden("only admins can do this", rule="not-an-admin")
