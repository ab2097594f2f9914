"""Routes for admins and auditors: the audit log and its verification, the policy, access checks."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from jitaccess.adapters.policy_yaml import load_policy_text, policy_digest, policy_to_document
from jitaccess.audit.chain import record_to_dict
from jitaccess.bootstrap import summarize_changes
from jitaccess.domain.errors import InvalidInput, NotFound
from jitaccess.entrypoints.api import schemas
from jitaccess.entrypoints.api.auth import Principal, RequestRoute, require_reader
from jitaccess.entrypoints.api.dependencies import ContainerDep, ReaderDep
from jitaccess.entrypoints.api.responses import COMMON, ModelResponse, problem_responses
from jitaccess.services.apply_policy import apply_policy
from jitaccess.services.check_access import check_access
from jitaccess.services.verify_audit import verify_audit

router = APIRouter(prefix="/api/v1", responses=COMMON, route_class=RequestRoute)

MAX_POLICY_BYTES = 1_000_000
# Audit sequence numbers are 64-bit in both stores; a larger `after` is a 422, not a driver error.
MAX_SEQ = 2**63 - 1
YAML_TYPES = frozenset(
    {"", "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"}
)


@router.get(
    "/check",
    tags=["grants"],
    response_model=schemas.AccessCheckOut,
    responses=problem_responses(403),
)
def check(
    caller: Principal,
    uow: ReaderDep,
    container: ContainerDep,
    role: Annotated[str, Query(description="e.g. prod-db/readonly")],
    principal: Annotated[str | None, Query(description="whose access; default: the caller")] = None,
) -> ModelResponse:
    """Is this access in force now, and until when? Others' access only for admins/auditors."""
    who = principal or caller
    if who != caller:
        require_reader(uow, caller)
    result = check_access(uow, container.clock, principal=who, role=role)
    return ModelResponse(schemas.AccessCheckOut.of(result))


@router.get(
    "/audit", tags=["audit"], response_model=schemas.AuditList, responses=problem_responses(403)
)
def get_audit(
    caller: Principal,
    uow: ReaderDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="records after this sequence number")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    tail: Annotated[
        int | None, Query(ge=1, le=5000, description="only the newest N (ignores after/limit)")
    ] = None,
) -> schemas.AuditList:
    """Audit records in order, each with its hash link; admins and auditors only."""
    require_reader(uow, caller)
    if tail is not None:
        records = uow.audit.last(tail)
    else:
        records = uow.audit.records(after=after, limit=limit)
    return schemas.AuditList(items=[record_to_dict(r) for r in records])


@router.get(
    "/audit/verify",
    tags=["audit"],
    response_model=schemas.VerificationOut,
    responses=problem_responses(403),
)
def verify(caller: Principal, uow: ReaderDep, container: ContainerDep) -> dict[str, Any]:
    """Recompute the hash chain; `ok` says whether it holds (the status is 200 either way)."""
    require_reader(uow, caller)
    # Page after page of records: all read from one snapshot.
    with container.uow.readonly(snapshot=True) as snapshot:
        return verify_audit(snapshot).as_dict()


@router.get(
    "/policy", tags=["policy"], response_model=schemas.PolicyOut, responses=problem_responses(404)
)
def get_policy(caller: Principal, uow: ReaderDep) -> schemas.PolicyOut:
    """The policy in force, as a document in the YAML shape."""
    current = uow.policies.current()
    if current is None:
        raise NotFound("no policy has been applied yet")
    return schemas.PolicyOut(
        version=current.version,
        digest=current.digest,
        applied_at=current.applied_at,
        applied_by=current.applied_by,
        document=dict(current.document),
    )


async def policy_text(request: Request) -> str:
    """The YAML of a PUT /policy: the raw body, or `{"yaml": "..."}` sent as JSON."""
    body = await request.body()
    if len(body) > MAX_POLICY_BYTES:
        raise InvalidInput("the policy document is larger than 1 MB", field="body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the policy document is not UTF-8 text", field="body") from None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidInput("the body is not valid JSON", field="body") from None
        if not isinstance(data, dict) or not isinstance(data.get("yaml"), str):
            raise InvalidInput('send {"yaml": "<policy text>"}', field="body.yaml")
        yaml_text: str = data["yaml"]
        return yaml_text
    if media not in YAML_TYPES:
        raise InvalidInput(
            f"unsupported content type {media!r}: send application/yaml, text/plain, "
            'or application/json {"yaml": "..."}',
            field="content-type",
        )
    return text


POLICY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/PolicyDocument"}},
        },
    }
}


@router.put(
    "/policy",
    tags=["policy"],
    response_model=schemas.PolicyApplied,
    responses=problem_responses(403, 409),
    openapi_extra=POLICY_BODY,
)
def put_policy(
    caller: Principal,
    container: ContainerDep,
    text: Annotated[str, Depends(policy_text)],
    filename: Annotated[str, Query(max_length=200, description="named in problems")] = (
        "policy.yaml"
    ),
) -> schemas.PolicyApplied:
    """Validate and apply a new policy version (admins only); unchanged is a no-op."""
    policy = load_policy_text(text, filename)
    with container.uow() as uow:
        applied = apply_policy(
            uow,
            container.clock,
            policy=policy,
            document=policy_to_document(policy),
            digest=policy_digest(policy),
            actor=caller,
            on_server_host=False,
            summarize=summarize_changes,
        )
        if applied is not None:
            return schemas.PolicyApplied(version=applied.version, changed=True)
        current = uow.policies.current()
    return schemas.PolicyApplied(version=current.version if current else 0, changed=False)
