"""The one place where errors become RFC 9457 `application/problem+json` responses.

Domain errors carry no HTTP; this module gives each a status. Database failures and anything
unexpected become problems too, without stacks, DSNs or other internals in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jitaccess.domain.errors import (
    AuditWriteFailed,
    Conflict,
    ConnectorError,
    Forbidden,
    InvalidInput,
    JitAccessError,
    NotEligible,
    NotFound,
    PolicyInvalid,
    PolicyViolation,
    RateLimited,
    SelfApproval,
    Unauthenticated,
    Unavailable,
)

logger = logging.getLogger(__name__)

PROBLEM_BASE = "https://jitaccess.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

# Looked up along the error's MRO, so a subclass without its own row inherits its parent's.
_STATUS: dict[type[JitAccessError], tuple[int, str]] = {
    NotFound: (404, "Not found"),
    Unauthenticated: (401, "Authentication required"),
    Forbidden: (403, "Forbidden"),
    NotEligible: (403, "Not eligible"),
    SelfApproval: (403, "Self-approval is not allowed"),
    PolicyViolation: (422, "Policy violation"),
    InvalidInput: (422, "Invalid input"),
    PolicyInvalid: (422, "Invalid policy"),
    Conflict: (409, "Conflict"),
    RateLimited: (429, "Too many attempts"),
    ConnectorError: (502, "Target error"),
    AuditWriteFailed: (503, "Audit write failed"),
    Unavailable: (503, "Service unavailable"),
}
DATABASE_UNAVAILABLE = "database unavailable"
# Where a request's bearer token waits to be looked up (see `auth.Caller`).
CALLER_KEY = "jitaccess.caller"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    type_uri: str | None = None,
    **extra: Any,
) -> ProblemResponse:
    """A problem response; `extra` members set to None are left out."""
    body: dict[str, Any] = {
        "type": type_uri or PROBLEM_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


def status_of(error: JitAccessError) -> tuple[int, str]:
    for cls in type(error).__mro__:
        found = _STATUS.get(cls)
        if found is not None:
            return found
    return 400, "Bad request"


def error_problem(error: JitAccessError) -> ProblemResponse:
    status, title = status_of(error)
    detail = error.message
    if isinstance(error, Unavailable):
        # The adapter's message may name the database host and user: keep it in the log only.
        logger.warning("database unavailable: %s", error.message)
        detail = DATABASE_UNAVAILABLE
    extra: dict[str, Any] = {"rule": error.rule}
    if isinstance(error, InvalidInput):
        extra["field"] = error.field
    if isinstance(error, PolicyInvalid):
        extra["problems"] = [p.as_dict() for p in error.problems]
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthenticated) else None
    return problem(status, error.code, title, detail, headers=headers, **extra)


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in location)


async def _on_domain_error(_: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, JitAccessError)
    return error_problem(exc)


async def _on_validation_error(_: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": _field_name(e.get("loc", ())),
            "message": str(e.get("msg", "invalid")).removeprefix("Value error, "),
        }
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return problem(
        422,
        InvalidInput.code,
        "Invalid input",
        first["message"],
        field=first["field"],
        errors=errors,
    )


async def _on_data_error(_: Request, exc: Exception) -> ProblemResponse:
    # PEP 249's DataError is about a value, not the database: PostgreSQL refuses a NUL in text
    # or a number too large for its column. The request sent it, so it is a 422, not a 503.
    assert isinstance(exc, DataError)
    logger.info("database refused a value: %s", type(exc.orig).__name__)
    return problem(
        422,
        InvalidInput.code,
        "Invalid input",
        "the request holds a value that cannot be stored (a NUL character, a number too large)",
    )


async def _on_database_error(_: Request, exc: Exception) -> ProblemResponse:
    # The driver's message can hold the DSN's host and user; the log gets the type only.
    logger.error("database error: %s", type(exc).__name__)
    return problem(503, Unavailable.code, "Service unavailable", DATABASE_UNAVAILABLE)


_HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """The methods some route answers on the request's path, for a 405's `Allow`."""
    scope = request.scope
    path = {key: scope[key] for key in ("type", "path", "root_path") if key in scope}
    return ", ".join(
        method
        for method in _HTTP_METHODS
        if any(
            route.matches({**path, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    )


async def _on_http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI answers a JSON body that is not UTF-8 with a bare 400; malformed JSON is a 422
        # invalid-input problem, and so is this (the same answer as PUT /policy gives).
        return problem(
            422, InvalidInput.code, "Invalid input", "the body is not UTF-8 JSON", field="body"
        )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette's `Allow` names the methods of the first route on the path only (GET of
        # /policy, not its PUT); RFC 9110 asks for all the methods the resource supports.
        headers["Allow"] = _allowed_methods(request)
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "Error"
    # No jitaccess meaning beyond the status (unknown route, wrong method): RFC 9457's default.
    return problem(
        exc.status_code,
        "http",
        phrase,
        str(exc.detail),
        headers=headers,
        type_uri="about:blank",
    )


class PendingCaller(Protocol):
    """A bearer token not looked up yet: the route looks it up first thing (`auth.Caller`)."""

    pending: bool

    def authenticate_alone(self) -> str: ...


Handler = Callable[[Request, Exception], Awaitable[ProblemResponse]]


def authenticated_first(handler: Handler) -> Handler:
    """An error answered before the route ran (invalid input, a dependency's refusal) is a
    401 problem if the token is bad: authentication comes first, as it always has."""

    async def handle(request: Request, exc: Exception) -> ProblemResponse:
        caller: PendingCaller | None = request.scope.get(CALLER_KEY)
        if caller is not None and caller.pending:
            try:
                await run_in_threadpool(caller.authenticate_alone)
            except JitAccessError as error:
                return error_problem(error)
            except DBAPIError as error:
                return await _on_database_error(request, error)
        return await handler(request, exc)

    return handle


def install_problem_handlers(app: FastAPI) -> None:
    handlers: list[tuple[type[Exception], Handler]] = [
        (JitAccessError, _on_domain_error),
        (RequestValidationError, _on_validation_error),
        (DataError, _on_data_error),  # found before its parent, DBAPIError
        (DBAPIError, _on_database_error),
        (StarletteHTTPException, _on_http_error),
    ]
    for error, handler in handlers:
        app.add_exception_handler(error, authenticated_first(handler))


class UnhandledErrorMiddleware:
    """Turns an exception no handler knew into a 500 problem, logging it server-side only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = problem(
                500,
                "internal-error",
                "Internal server error",
                "an unexpected error occurred; it has been logged",
            )
            await response(scope, receive, send)
