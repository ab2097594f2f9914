"""How responses are sent and documented: error responses are problem+json, for every route;
a hot route sends its model as a `ModelResponse`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Response
from pydantic import BaseModel

from jitaccess.entrypoints.api.problems import PROBLEM_MEDIA_TYPE


class ModelResponse(Response):
    """A response model serialized once, by pydantic. Returned as is, a model is validated
    again by FastAPI against the route's `response_model`, and for a sync route in a worker
    thread of its own: one more threadpool hop a request. The route still names its
    `response_model`, for the OpenAPI document."""

    media_type = "application/json"

    def __init__(
        self, model: BaseModel, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(model.model_dump_json(by_alias=True), status_code, headers)


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
