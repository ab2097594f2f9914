"""Drift in real targets through the reconcile service: access created behind jitaccess's back
in Redis (and MariaDB, PostgreSQL in their own modules) is found, and with `drift: remove` it
is removed and audited, while access a live grant explains is left alone."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import redis

from jitaccess.clock import SystemClock
from jitaccess.domain.model import Request
from jitaccess.services.reconcile import reconcile
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkerOptions, run_due_work
from support.databases import container_on
from support.redis import acl_user_exists, private_redis

REDIS_POLICY = """
admins: [group:security]
users:
  alice: {groups: [engineers]}
  sam: {groups: [security]}
targets:
  cache:
    type: redis
    connection: {env: JIT_DRIFT_REDIS}
    drift: remove
roles:
  cache/read:
    target: cache
    grants: {redis_acl: "~cache:* +@read"}
    duration: {default: 30m, max: 1h}
eligibility:
  - principals: [group:engineers]
    roles: [cache/read]
"""


def test_redis_user_made_by_hand_is_found_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with private_redis() as admin_url:
        monkeypatch.setenv("JIT_DRIFT_REDIS", admin_url)
        admin = redis.Redis.from_url(admin_url)
        admin.acl_setuser(
            "mallory", enabled=True, passwords=["+hunter2"], keys=["*"], commands=["+@all"]
        )
        with container_on("sqlite", tmp_path, policy=REDIS_POLICY) as app:
            app.clock = SystemClock()  # the grant lives in the real Redis, in real time
            with app.uow() as uow:
                request = request_access(
                    uow,
                    app.clock,
                    app.connectors,
                    requester="alice",
                    roles=["cache/read"],
                    duration=timedelta(minutes=30),
                    justification="drift test",
                )
            assert isinstance(request, Request)
            run_due_work(
                app.uow, app.clock, app.connectors, app.box, WorkerOptions(jitter=lambda: 1.0)
            )
            report = reconcile(app.uow, app.clock, app.connectors)
            (target,) = report.targets
            assert (target.ok, target.unexplained, target.removed) == (
                True,
                ["mallory"],
                ["mallory"],
            )
            assert not acl_user_exists(admin_url, "mallory")
            with app.uow.readonly() as uow:
                audit = [r.entry for r in uow.audit.iterate()]
                (grant,) = uow.grants.list(request_id=request.id)
            assert [e.data["account"] for e in audit if e.action == "drift.removed"] == ["mallory"]
            assert all("hunter2" not in str(e) for e in audit)
            # alice's own ACL user is explained by her grant and stays.
            users = [str(u) for u in admin.acl_users()]
            assert any(u.startswith("jit_alice_") for u in users)
            assert grant.state.value == "active"
            assert reconcile(app.uow, app.clock, app.connectors).unexplained == 0
        admin.close()
