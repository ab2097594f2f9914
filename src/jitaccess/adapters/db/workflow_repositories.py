"""MFA enrollments, reviews, the notification inbox, drift findings, target health and
periodic jobs over SQLAlchemy Core."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, select, update
from sqlalchemy.exc import IntegrityError

from jitaccess.adapters.db.tables import (
    drift_findings,
    jobs,
    mfa_enrollments,
    notifications,
    reviews,
    target_health,
)
from jitaccess.domain.mfa import MfaEnrollment
from jitaccess.domain.model import Review, ReviewState
from jitaccess.ports import DriftFinding, Notification, TargetHealth


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


class SqlDrift:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, finding: DriftFinding) -> None:
        values = dict(finding.__dict__)
        values["detail"] = _jsonable(finding.detail)
        self.conn.execute(drift_findings.insert().values(**values))

    def save(self, finding: DriftFinding) -> None:
        values = dict(finding.__dict__)
        values["detail"] = _jsonable(finding.detail)
        del values["id"]
        self.conn.execute(
            update(drift_findings).where(drift_findings.c.id == finding.id).values(**values)
        )

    def open_for(self, target: str) -> builtins.list[DriftFinding]:
        query = select(drift_findings).where(
            drift_findings.c.target == target, drift_findings.c.state == "open"
        )
        return [DriftFinding(**dict(r._mapping)) for r in self.conn.execute(query)]

    def list(
        self, *, state: str | None = None, target: str | None = None, limit: int = 500
    ) -> builtins.list[DriftFinding]:
        query = select(drift_findings).order_by(drift_findings.c.last_seen_at.desc()).limit(limit)
        if state is not None:
            query = query.where(drift_findings.c.state == state)
        if target is not None:
            query = query.where(drift_findings.c.target == target)
        return [DriftFinding(**dict(r._mapping)) for r in self.conn.execute(query)]


def _jsonable(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Connector details as JSON: datetimes as ISO text, other odd values as text."""
    return json.loads(json.dumps(dict(detail), default=str))  # type: ignore[no-any-return]


class SqlOps:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def save_health(self, health: TargetHealth) -> None:
        values = dict(health.__dict__)
        done = self.conn.execute(
            update(target_health).where(target_health.c.target == health.target).values(**values)
        )
        if done.rowcount == 0:
            self.conn.execute(target_health.insert().values(**values))

    def health(self) -> builtins.list[TargetHealth]:
        query = select(target_health).order_by(target_health.c.target)
        return [TargetHealth(**dict(r._mapping)) for r in self.conn.execute(query)]

    def claim_job(self, name: str, now: datetime, next_run_at: datetime) -> bool:
        taken = self.conn.execute(
            update(jobs)
            .where(jobs.c.name == name, jobs.c.next_run_at <= now)
            .values(next_run_at=next_run_at, last_run_at=now)
        )
        if taken.rowcount == 1:
            return True
        exists = self.conn.execute(select(jobs.c.name).where(jobs.c.name == name)).first()
        if exists is not None:
            return False
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    jobs.insert().values(name=name, next_run_at=next_run_at, last_run_at=now)
                )
        except IntegrityError:
            return False  # another worker created it first and runs it
        return True

    def finish_job(self, name: str, result: Mapping[str, Any]) -> None:
        self.conn.execute(
            update(jobs).where(jobs.c.name == name).values(last_result=_jsonable(result))
        )
