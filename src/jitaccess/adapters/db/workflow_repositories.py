"""MFA enrollments, post-incident reviews and the notification inbox over SQLAlchemy Core."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, select, update

from jitaccess.adapters.db.tables import mfa_enrollments, notifications, reviews
from jitaccess.domain.mfa import MfaEnrollment
from jitaccess.domain.model import Review, ReviewState
from jitaccess.ports import Notification


class SqlMfa:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, principal: str, *, for_update: bool = False) -> MfaEnrollment | None:
        query = select(mfa_enrollments).where(mfa_enrollments.c.principal == principal)
        if for_update:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return MfaEnrollment(**dict(row._mapping)) if row else None

    def save(self, enrollment: MfaEnrollment) -> None:
        values = dict(enrollment.__dict__)
        done = self.conn.execute(
            update(mfa_enrollments)
            .where(mfa_enrollments.c.principal == enrollment.principal)
            .values(**values)
        )
        if done.rowcount == 0:
            self.conn.execute(mfa_enrollments.insert().values(**values))

    def delete(self, principal: str) -> None:
        self.conn.execute(delete(mfa_enrollments).where(mfa_enrollments.c.principal == principal))


def _review_row(review: Review) -> dict[str, Any]:
    values = dict(review.__dict__)
    values["roles"] = list(review.roles)
    values["state"] = review.state.value
    return values


def _review_from(row: Row[Any]) -> Review:
    values = dict(row._mapping)
    values["roles"] = tuple(values["roles"])
    values["state"] = ReviewState(values["state"])
    return Review(**values)


class SqlReviews:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, review: Review) -> None:
        self.conn.execute(reviews.insert().values(**_review_row(review)))

    def get(self, review_id: str, *, for_update: bool = False) -> Review | None:
        query = select(reviews).where(reviews.c.id == review_id)
        if for_update:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return _review_from(row) if row else None

    def save(self, review: Review) -> None:
        values = _review_row(review)
        del values["id"]
        self.conn.execute(update(reviews).where(reviews.c.id == review.id).values(**values))

    def list(self, *, state: str | None = None, limit: int = 200) -> builtins.list[Review]:
        query = select(reviews).order_by(reviews.c.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(reviews.c.state == state)
        return [_review_from(r) for r in self.conn.execute(query)]


class SqlNotifications:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, notification: Notification) -> None:
        values = dict(notification.__dict__)
        values["data"] = dict(notification.data)
        self.conn.execute(notifications.insert().values(**values))

    def list(
        self, *, recipient: str, since: datetime | None = None, limit: int = 100
    ) -> builtins.list[Notification]:
        query = (
            select(notifications)
            .where(notifications.c.recipient == recipient)
            .order_by(notifications.c.created_at.desc(), notifications.c.id)
            .limit(limit)
        )
        if since is not None:
            query = query.where(notifications.c.created_at >= since)
        return [Notification(**dict(r._mapping)) for r in self.conn.execute(query)]
