"""What routes receive from the app: the container of adapters and the metrics of this app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

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
