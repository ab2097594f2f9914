"""How error responses look in the OpenAPI document: problem+json, for every route."""

from __future__ import annotations

from typing import Any

from jitaccess.entrypoints.api.problems import PROBLEM_MEDIA_TYPE

# app.py puts `Problem` into the components; only problem+json is ever sent for errors.
_SCHEMA = {"$ref": "#/components/schemas/Problem"}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "Missing, unknown or revoked token",
        403: "Not allowed for this caller",
        404: "No such object (or not visible to this caller)",
        409: "The object is no longer in a state where this makes sense",
        422: "Invalid input or a policy rule refused it",
        429: "Too many wrong MFA codes: locked out for a while",
        502: "The target refused or could not be reached",
        503: "The database or audit log is unavailable",
    }
    return {
        status: {
            "description": descriptions.get(status, "Problem"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _SCHEMA}},
        }
        for status in statuses
    }


COMMON = problem_responses(401, 422, 503)
