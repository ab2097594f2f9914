"""Routes for operators: liveness, readiness, and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from jitaccess.domain.errors import JitAccessError, Unavailable
from jitaccess.entrypoints.api import schemas
from jitaccess.entrypoints.api.dependencies import ContainerDep, MetricsDep
from jitaccess.entrypoints.api.problems import DATABASE_UNAVAILABLE, ProblemResponse, problem
from jitaccess.entrypoints.api.responses import problem_responses

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=schemas.Status)
def healthz() -> schemas.Status:
    """The process runs (nothing else is checked)."""
    return schemas.Status(status="ok")


@router.get("/readyz", response_model=schemas.Status, responses=problem_responses(503))
def readyz(container: ContainerDep) -> schemas.Status | ProblemResponse:
    """Ready to serve: the database answers and a policy is in force."""
    try:
        with container.uow.readonly() as uow:
            uow.conn.execute(text("SELECT 1"))
            current = uow.policies.current()
    except (DBAPIError, JitAccessError) as error:
        logger.warning("not ready: %s", type(error).__name__)
        return problem(503, Unavailable.code, "Not ready", DATABASE_UNAVAILABLE)
    if current is None:
        return problem(503, Unavailable.code, "Not ready", "no policy has been applied yet")
    return schemas.Status(status="ready")


@router.get("/metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format; `jitaccess_grants` is counted in the database at scrape time."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
