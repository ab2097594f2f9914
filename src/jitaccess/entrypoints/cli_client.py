"""The CLI's side of the HTTP API: one client, problem+json turned into messages and exit codes."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import httpx
from rich.console import Console
from rich.markup import escape

from jitaccess.domain.errors import (
    AuditWriteFailed,
    Conflict,
    ConnectorError,
    InvalidInput,
    JitAccessError,
    NotFound,
    Unauthenticated,
    Unavailable,
)

err = Console(stderr=True)

# Exit codes that mean something to scripts (documented in the README).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_UNAUTHENTICATED = 6
EXIT_UNAVAILABLE = 7

_STATUS_EXIT = {
    401: EXIT_UNAUTHENTICATED,
    403: EXIT_REFUSED,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    422: EXIT_REFUSED,
    429: EXIT_REFUSED,
    502: EXIT_UNAVAILABLE,
    503: EXIT_UNAVAILABLE,
}


def exit_code_for(error: JitAccessError) -> int:
    """The same exit codes whether a refusal came from the API or from the database directly."""
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, Conflict):
        return EXIT_CONFLICT
    if isinstance(error, InvalidInput):
        return EXIT_USAGE
    if isinstance(error, Unauthenticated):
        return EXIT_UNAUTHENTICATED
    if isinstance(error, Unavailable | ConnectorError | AuditWriteFailed):
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


class Client:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("JITACCESS_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.token = token or os.environ.get("JITACCESS_TOKEN", "")
        if not self.token:
            fail("JITACCESS_TOKEN is not set (ask an admin for a token)", EXIT_UNAUTHENTICATED)
        self.http = httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30.0,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            fail(f"cannot reach {self.url}: {error}", EXIT_UNAVAILABLE)
        if response.status_code >= 400:
            self._problem(response)
        return response.json()

    @staticmethod
    def _problem(response: httpx.Response) -> NoReturn:
        try:
            body = response.json()
        except json.JSONDecodeError:
            fail(f"HTTP {response.status_code}: {response.text[:200]}")
        detail = body.get("detail") or body.get("title") or response.reason_phrase
        extras = [f"{k}: {body[k]}" for k in ("rule", "field") if body.get(k)]
        message = f"{detail}" + (f" ({'; '.join(extras)})" if extras else "")
        for problem in body.get("problems") or []:
            message += (
                f"\n  {problem['file']}:{problem['line']}: {problem['key']}: {problem['reason']}"
            )
        fail(message, _STATUS_EXIT.get(response.status_code, EXIT_ERROR))
