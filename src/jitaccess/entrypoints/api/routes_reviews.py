"""Routes for post-incident reviews (break-glass) and each caller's notification inbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from jitaccess.domain.errors import InvalidInput
from jitaccess.domain.model import ReviewState
from jitaccess.entrypoints.api import schemas
from jitaccess.entrypoints.api.auth import Principal, RequestRoute
from jitaccess.entrypoints.api.dependencies import ContainerDep, ReaderDep
from jitaccess.entrypoints.api.responses import COMMON, problem_responses
from jitaccess.services.notify import list_notifications
from jitaccess.services.reviews import list_reviews, read_review, sign_off

router = APIRouter(prefix="/api/v1", responses=COMMON, route_class=RequestRoute)


@router.get("/reviews", tags=["reviews"], response_model=schemas.ReviewList)
def get_reviews(
    principal: Principal,
    uow: ReaderDep,
    state: ReviewState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> schemas.ReviewList:
    """Break-glass reviews the caller may see: their own, those of roles they approve, all for
    admins and auditors. `state=open` lists what still needs a sign-off."""
    found = list_reviews(uow, viewer=principal, state=state.value if state else None, limit=limit)
    return schemas.ReviewList(items=[schemas.ReviewOut.of(r) for r in found])


@router.get(
    "/reviews/{review_id}",
    tags=["reviews"],
    response_model=schemas.ReviewOut,
    responses=problem_responses(404),
)
def get_review(review_id: str, principal: Principal, uow: ReaderDep) -> schemas.ReviewOut:
    return schemas.ReviewOut.of(read_review(uow, review_id=review_id, viewer=principal))


@router.post(
    "/reviews/{review_id}/sign-off",
    tags=["reviews"],
    response_model=schemas.ReviewOut,
    responses=problem_responses(403, 404, 409, 422),
)
def post_sign_off(
    review_id: str, body: schemas.SignOff, principal: Principal, container: ContainerDep
) -> schemas.ReviewOut:
    """Close a review: an approver of its roles or an admin, never the one who broke the glass."""
    with container.uow() as uow:
        review = sign_off(
            uow, container.clock, review_id=review_id, actor=principal, comment=body.comment
        )
    return schemas.ReviewOut.of(review)


@router.get("/notifications", tags=["notifications"], response_model=schemas.NotificationList)
def get_notifications(
    principal: Principal,
    uow: ReaderDep,
    since: Annotated[datetime | None, Query(description="only those at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> schemas.NotificationList:
    """The caller's inbox, newest first: approvals needed, escalations, decisions, alerts."""
    if since is not None:
        try:
            since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
        except OverflowError:
            # 0001-01-01T00:00:00+14:00 is a valid timestamp that UTC cannot hold.
            raise InvalidInput("since is out of range", field="since") from None
    found = list_notifications(uow, viewer=principal, since=since, limit=limit)
    return schemas.NotificationList(items=[schemas.NotificationOut.of(n) for n in found])
