"""Notifications: one inbox row per recipient, written in the transaction that caused it (so a
rolled-back change notifies nobody), readable at GET /api/v1/notifications."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from jitaccess.domain.model import new_id
from jitaccess.ports import Notification, UnitOfWork

log = logging.getLogger("jitaccess.notify")


def notify(
    uow: UnitOfWork,
    now: datetime,
    recipients: Iterable[str],
    kind: str,
    subject: str,
    message: str,
    data: Mapping[str, Any] | None = None,
) -> list[str]:
    """Send `message` to each distinct recipient; returns who was notified, sorted."""
    people = sorted(set(recipients))
    for person in people:
        uow.notifications.add(
            Notification(
                id=new_id("ntf"),
                recipient=person,
                kind=kind,
                subject=subject,
                message=message,
                created_at=now,
                data=dict(data or {}),
            )
        )
    if people:
        log.info("notify %s about %s: %s", ",".join(people), subject, kind)
    return people


def list_notifications(
    uow: UnitOfWork, *, viewer: str, since: datetime | None = None, limit: int = 100
) -> list[Notification]:
    return uow.notifications.list(recipient=viewer, since=since, limit=limit)
