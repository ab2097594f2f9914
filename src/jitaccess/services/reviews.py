"""Use case: post-incident reviews of break-glass activations — who may read them, and the
sign-off that closes one. Signing off needs someone other than the person who broke the glass:
an approver of one of its roles, or an admin."""

from __future__ import annotations

from jitaccess.domain.errors import Forbidden, InvalidInput, JitAccessError, NotFound
from jitaccess.domain.model import Review
from jitaccess.domain.policy import Policy
from jitaccess.ports import Clock, UnitOfWork
from jitaccess.services.context import audit, current_policy, refuse

MAX_COMMENT = 4000


def may_sign_off(policy: Policy, review: Review, principal: str) -> bool:
    if principal == review.principal:
        return False
    if policy.is_admin(principal):
        return True
    if policy.is_auditor(principal):  # auditors read everything and change nothing
        return False
    return any(
        principal in policy.role_approvers(policy.roles[name])
        for name in review.roles
        if name in policy.roles
    )


def may_see(policy: Policy, review: Review, viewer: str) -> bool:
    return (
        viewer == review.principal
        or policy.can_read_everything(viewer)
        or may_sign_off(policy, review, viewer)
    )


def list_reviews(
    uow: UnitOfWork, *, viewer: str, state: str | None = None, limit: int = 200
) -> list[Review]:
    policy = current_policy(uow).policy
    everything = policy.can_read_everything(viewer)
    found = uow.reviews.list(state=state, limit=limit if everything else 10_000)
    return [r for r in found if may_see(policy, r, viewer)][:limit]


def read_review(uow: UnitOfWork, *, review_id: str, viewer: str) -> Review:
    policy = current_policy(uow).policy
    review = uow.reviews.get(review_id)
    if review is None or not may_see(policy, review, viewer):
        raise NotFound(f"no review {review_id}")
    return review


def sign_off(uow: UnitOfWork, clock: Clock, *, review_id: str, actor: str, comment: str) -> Review:
    now = clock.now()
    policy = current_policy(uow).policy
    review = uow.reviews.get(review_id, for_update=True)
    try:
        if review is None or not may_see(policy, review, actor):
            raise NotFound(f"no review {review_id}")
        if not comment.strip():
            raise InvalidInput("a sign-off needs a comment saying what was found", field="comment")
        if len(comment) > MAX_COMMENT:
            raise InvalidInput(f"comment is longer than {MAX_COMMENT} characters", field="comment")
        if not may_sign_off(policy, review, actor):
            raise Forbidden(
                f"{actor} may not sign off review {review_id}: only an approver of its roles or an "
                "admin, and never the person who broke the glass",
                rule="review-sign-off",
            )
        review.sign_off(actor, comment, now)
    except JitAccessError as error:
        raise refuse(uow, now, actor, "review.sign_off", review_id, error) from None
    uow.reviews.save(review)
    audit(
        uow,
        now,
        actor,
        "review.signed_off",
        review.id,
        comment=comment,
        data={"request": review.request_id, "principal": review.principal},
    )
    uow.commit()
    return review
