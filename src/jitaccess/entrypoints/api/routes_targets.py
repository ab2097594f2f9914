"""Routes for targets: health, drift findings, reconciling now, and the SSH CA's public parts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from jitaccess.bootstrap import Container
from jitaccess.domain.errors import NotFound
from jitaccess.domain.policy import Target
from jitaccess.entrypoints.api import schemas
from jitaccess.entrypoints.api.auth import Principal, RequestRoute, require_admin, require_reader
from jitaccess.entrypoints.api.dependencies import ContainerDep, ReaderDep
from jitaccess.entrypoints.api.responses import COMMON, problem_responses
from jitaccess.services.reconcile import check_targets, reconcile

router = APIRouter(prefix="/api/v1", responses=COMMON, route_class=RequestRoute)


@router.get(
    "/targets",
    tags=["targets"],
    response_model=schemas.TargetList,
    responses=problem_responses(403),
)
def get_targets(
    principal: Principal,
    uow: ReaderDep,
    container: ContainerDep,
    check: Annotated[bool, Query(description="run every health check now (admins)")] = False,
) -> schemas.TargetList:
    """Each target of the policy: connector type, drift action, last health check and error,
    last reconcile, open drift findings. Admins and auditors."""
    require_reader(uow, principal)
    if check:
        require_admin(uow, principal)
        check_targets(container.uow, container.clock, container.connectors)
    policy = container.current_policy()
    health = {h.target: h for h in uow.ops.health()}
    open_drift: dict[str, int] = {}
    for finding in uow.drift.list(state="open", limit=10_000):
        open_drift[finding.target] = open_drift.get(finding.target, 0) + 1
    return schemas.TargetList(
        items=[
            schemas.TargetOut.of(target, health.get(name), open_drift.get(name, 0))
            for name, target in policy.targets.items()
        ]
    )


@router.get(
    "/drift", tags=["targets"], response_model=schemas.DriftList, responses=problem_responses(403)
)
def get_drift(
    principal: Principal,
    uow: ReaderDep,
    state: Annotated[str | None, Query(pattern="^(open|removed|repaired|gone)$")] = "open",
    target: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> schemas.DriftList:
    """Access found in targets that no grant explains, and grants whose access went missing."""
    require_reader(uow, principal)
    found = uow.drift.list(state=state, target=target, limit=limit)
    return schemas.DriftList(items=[schemas.DriftOut.of(f) for f in found])


@router.post(
    "/reconcile",
    tags=["targets"],
    response_model=schemas.ReconcileOut,
    responses=problem_responses(403, 404),
)
def post_reconcile(
    principal: Principal,
    uow: ReaderDep,
    container: ContainerDep,
    target: Annotated[list[str] | None, Query(description="only these targets")] = None,
) -> schemas.ReconcileOut:
    """Compare every target (or the named ones) with the grants now; admins only."""
    require_admin(uow, principal)
    policy = container.current_policy()
    unknown = [t for t in target or [] if t not in policy.targets]
    if unknown:
        raise NotFound(f"no target {', '.join(unknown)}")
    report = reconcile(
        container.uow, container.clock, container.connectors, actor=principal, only=target or ()
    )
    return schemas.ReconcileOut.of(report)


def _ssh_target(container: Container, name: str | None) -> Target:
    targets = [t for t in container.current_policy().targets.values() if t.type == "ssh"]
    if name is not None:
        targets = [t for t in targets if t.name == name]
    if not targets:
        raise NotFound(f"no ssh target{' ' + name if name else ''} in the policy")
    if len(targets) > 1:
        raise NotFound("several ssh targets: name one with ?target=")
    return targets[0]


@router.get(
    "/ssh/ca",
    tags=["ssh"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **problem_responses(404)},
)
def get_ssh_ca(container: ContainerDep, target: str | None = None) -> Response:
    """The CA public key line for sshd's `TrustedUserCAKeys` (public; no token needed)."""
    connector = container.connectors.for_target(_ssh_target(container, target))
    line: str = connector.ca_public_line()  # type: ignore[attr-defined]
    return Response(line + "\n", media_type="text/plain")


@router.get(
    "/ssh/krl",
    tags=["ssh"],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **problem_responses(404)},
)
def get_ssh_krl(container: ContainerDep, target: str | None = None) -> Response:
    """The key revocation list for sshd's `RevokedKeys` (public; no token needed)."""
    connector = container.connectors.for_target(_ssh_target(container, target))
    data: bytes = connector.krl_bytes()  # type: ignore[attr-defined]
    return Response(data, media_type="application/octet-stream")
