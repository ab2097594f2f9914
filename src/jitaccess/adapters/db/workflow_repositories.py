"""MFA enrollments, reviews, the notification inbox, drift findings, target health and
periodic jobs over SQLAlchemy Core. Statements are built once and executed with the row as
parameters (see repositories.py for why)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from jitaccess.adapters.db.tables import (
    drift_findings,
    jobs,
    mfa_enrollments,
    notifications,
    reviews,
    target_health,
)
from jitaccess.adapters.db.write_buffer import WriteBuffer
from jitaccess.domain.mfa import MfaEnrollment
from jitaccess.domain.model import Review, ReviewState
from jitaccess.ports import DriftFinding, Notification, TargetHealth

# Bound parameters are named "b_…": one may not share its name with a column being SET.
_GET_MFA = select(mfa_enrollments).where(mfa_enrollments.c.principal == bindparam("b_principal"))
_GET_MFA_FOR_UPDATE = _GET_MFA.with_for_update()
_UPDATE_MFA = update(mfa_enrollments).where(mfa_enrollments.c.principal == bindparam("b_principal"))
_DELETE_MFA = delete(mfa_enrollments).where(mfa_enrollments.c.principal == bindparam("b_principal"))


class SqlMfa:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, principal: str, *, for_update: bool = False) -> MfaEnrollment | None:
        query = _GET_MFA_FOR_UPDATE if for_update else _GET_MFA
        row = self.conn.execute(query, {"b_principal": principal}).first()
        return MfaEnrollment(**dict(row._mapping)) if row else None

    def save(self, enrollment: MfaEnrollment) -> None:
        values = dict(enrollment.__dict__)
        done = self.conn.execute(_UPDATE_MFA, {**values, "b_principal": enrollment.principal})
        if done.rowcount == 0:
            self.conn.execute(mfa_enrollments.insert(), values)

    def delete(self, principal: str) -> None:
        self.conn.execute(_DELETE_MFA, {"b_principal": principal})


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


_GET_REVIEW = select(reviews).where(reviews.c.id == bindparam("b_id"))
_GET_REVIEW_FOR_UPDATE = _GET_REVIEW.with_for_update()
_UPDATE_REVIEW = update(reviews).where(reviews.c.id == bindparam("b_id"))


class SqlReviews:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, review: Review) -> None:
        self.conn.execute(reviews.insert(), _review_row(review))

    def get(self, review_id: str, *, for_update: bool = False) -> Review | None:
        query = _GET_REVIEW_FOR_UPDATE if for_update else _GET_REVIEW
        row = self.conn.execute(query, {"b_id": review_id}).first()
        return _review_from(row) if row else None

    def save(self, review: Review) -> None:
        values = _review_row(review)
        values["b_id"] = values.pop("id")
        self.conn.execute(_UPDATE_REVIEW, values)

    def list(self, *, state: str | None = None, limit: int = 200) -> builtins.list[Review]:
        query = select(reviews).order_by(reviews.c.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(reviews.c.state == state)
        return [_review_from(r) for r in self.conn.execute(query)]


_INSERT_NOTIFICATION = notifications.insert()


class SqlNotifications:
    """Adds are held in the unit of work's write buffer, when it has one (write_buffer.py)."""

    def __init__(self, conn: Connection, writes: WriteBuffer | None = None) -> None:
        self.conn = conn
        self.writes = writes

    def add(self, notification: Notification) -> None:
        values = dict(notification.__dict__)
        values["data"] = dict(notification.data)
        if self.writes is not None:
            self.writes.insert(notifications, values)
            return
        self.conn.execute(_INSERT_NOTIFICATION, values)

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


_UPDATE_FINDING = update(drift_findings).where(drift_findings.c.id == bindparam("b_id"))


class SqlDrift:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, finding: DriftFinding) -> None:
        values = dict(finding.__dict__)
        values["detail"] = _jsonable(finding.detail)
        self.conn.execute(drift_findings.insert(), values)

    def save(self, finding: DriftFinding) -> None:
        values = dict(finding.__dict__)
        values["detail"] = _jsonable(finding.detail)
        values["b_id"] = values.pop("id")
        self.conn.execute(_UPDATE_FINDING, values)

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


_UPDATE_HEALTH = update(target_health).where(target_health.c.target == bindparam("b_target"))


class SqlOps:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def save_health(self, health: TargetHealth) -> None:
        values = dict(health.__dict__)
        done = self.conn.execute(_UPDATE_HEALTH, {**values, "b_target": health.target})
        if done.rowcount == 0:
            self.conn.execute(target_health.insert(), values)

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
