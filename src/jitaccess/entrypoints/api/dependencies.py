"""What routes receive from the app: the container of adapters, the metrics of this app, and
the request's one read-only unit of work."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from jitaccess.adapters.db.unit_of_work import SqlUnitOfWork, SqlUnitOfWorkFactory
from jitaccess.bootstrap import Container
from jitaccess.entrypoints.api.metrics import Metrics


async def container_of(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


async def metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


ContainerDep = Annotated[Container, Depends(container_of)]
MetricsDep = Annotated[Metrics, Depends(metrics_of)]


class RequestReader:
    """The request's read-only unit of work, shared by the authentication and the route: one
    connection from the pool a request. Opened where it is first used, in the route's worker
    thread, never on the event loop (a checkout may wait for a connection, or connect), and
    closed there when the route returns (see `auth.RequestRoute`)."""

    def __init__(self, factory: SqlUnitOfWorkFactory) -> None:
        self.factory = factory
        self._uow: SqlUnitOfWork | None = None

    def open(self) -> SqlUnitOfWork:
        if self._uow is None:
            self._uow = self.factory.readonly().__enter__()
        return self._uow

    def close(self) -> None:
        uow, self._uow = self._uow, None
        if uow is not None:
            uow.__exit__(None, None, None)


_READER_KEY = "jitaccess.reader"


def request_reader(request: Request) -> RequestReader:
    """The request's reader, made on first ask (no I/O)."""
    reader: RequestReader | None = request.scope.get(_READER_KEY)
    if reader is None:
        container: Container = request.app.state.container
        reader = request.scope[_READER_KEY] = RequestReader(container.uow)
    return reader


async def reader_of(request: Request) -> RequestReader:
    return request_reader(request)


# A route of `auth.RequestRoute` receives the unit of work itself, open.
ReaderDep = Annotated[SqlUnitOfWork, Depends(reader_of)]
