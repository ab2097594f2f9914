"""The FastAPI app factory: wires routes, problem handlers and metrics around one container."""

from __future__ import annotations

from fastapi import FastAPI

from jitaccess import __version__
from jitaccess.bootstrap import Container
from jitaccess.entrypoints.api import (
    routes_admin,
    routes_grants,
    routes_mfa,
    routes_ops,
    routes_requests,
    routes_reviews,
    routes_targets,
)
from jitaccess.entrypoints.api.metrics import HttpMetricsMiddleware, Metrics
from jitaccess.entrypoints.api.problems import UnhandledErrorMiddleware, install_problem_handlers
from jitaccess.entrypoints.api.schemas import PolicyDocument, Problem

DESCRIPTION = (
    "Just-in-time privileged access. Authenticate with `Authorization: Bearer <token>`; "
    "errors are RFC 9457 `application/problem+json`."
)


def create_app(container: Container) -> FastAPI:
    app = FastAPI(title="jitaccess", version=__version__, description=DESCRIPTION)
    app.state.container = container
    app.state.metrics = metrics = Metrics(container.uow)
    install_problem_handlers(app)
    modules = (routes_requests, routes_grants, routes_reviews, routes_admin, routes_mfa)
    for module in (*modules, routes_targets, routes_ops):
        app.include_router(module.router)
    # Added last is outermost: metrics also count the 500s the error middleware produces.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    _add_referenced_schemas(app)
    return app


def _add_referenced_schemas(app: FastAPI) -> None:
    """Add the schemas that hand-written parts of the document refer to: error responses
    (`Problem`) and the JSON form of PUT /policy (`PolicyDocument`)."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (Problem, PolicyDocument):
                components.setdefault(model.__name__, model.model_json_schema())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
