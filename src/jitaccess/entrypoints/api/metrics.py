"""Prometheus metrics of one app: HTTP traffic, request outcomes, and grants by state.

Each app has its own `CollectorRegistry`, so tests that build many apps never collide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jitaccess.adapters.db.tables import grants
from jitaccess.adapters.db.unit_of_work import SqlUnitOfWorkFactory
from jitaccess.domain.errors import JitAccessError
from jitaccess.domain.model import GrantState

logger = logging.getLogger(__name__)

REQUEST_OUTCOMES = ("approved", "pending", "refused")
UNMATCHED_ROUTE = "<unmatched>"


class GrantStateCollector(Collector):
    """`jitaccess_grants{state}`, counted with one GROUP BY at scrape time."""

    name = "jitaccess_grants"
    documentation = "Grants by state, counted in the database at scrape time"

    def __init__(self, uow: SqlUnitOfWorkFactory) -> None:
        self.uow = uow

    def describe(self) -> Iterable[Metric]:
        # Lets the registry learn the name without a database query at registration.
        return [GaugeMetricFamily(self.name, self.documentation, labels=["state"])]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=["state"])
        counts = dict.fromkeys((state.value for state in GrantState), 0)
        try:
            with self.uow.readonly() as uow:
                query = select(grants.c.state, func.count()).group_by(grants.c.state)
                for state, count in uow.conn.execute(query):
                    counts[str(state)] = int(count)
        except (DBAPIError, JitAccessError) as error:
            logger.warning("cannot count grants for /metrics: %s", type(error).__name__)
            return [family]
        for state, count in counts.items():
            family.add_metric([state], count)
        return [family]


class Metrics:
    def __init__(self, uow: SqlUnitOfWorkFactory) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "jitaccess_requests",
            "Access requests made through the API, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in REQUEST_OUTCOMES:
            self.requests.labels(outcome)
        self.http_requests = Counter(
            "jitaccess_http_requests",
            "HTTP requests served, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "jitaccess_http_request_seconds",
            "Time to serve an HTTP request, by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(GrantStateCollector(uow))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(method, route).observe(seconds)


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.observe(
                str(scope.get("method", "")), route, status, time.perf_counter() - started
            )
