"""Drift in real targets through the reconcile service: access created behind jitaccess's back
in Redis (and MariaDB, PostgreSQL in their own modules) is found, and with `drift: remove` it
is removed and audited, while access a live grant explains is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from jitaccess.clock import SystemClock
from jitaccess.domain.model import EndReason
from jitaccess.services.end_grant import end_grant
from jitaccess.services.grant_issuing import access_of
from jitaccess.services.reconcile import reconcile
from support.databases import container_on, granted, work
from support.mariadb import (
    execute,
    require_mariadb,
    roles_of,
    scratch_database,
    scratch_role,
    scratch_user,
    user_hosts,
)
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
            request = granted(app, "cache/read")
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


MARIADB_POLICY = """
admins: [group:security]
users:
  alice: {groups: [engineers]}
  sam: {groups: [security]}
targets:
  shop:
    type: mariadb
    connection: {env: JIT_DRIFT_MARIADB}
    drift: remove
roles:
  shop/read:
    target: shop
    grants: {mariadb_roles: [ROLE]}
    duration: {default: 30m, max: 1h}
eligibility:
  - principals: [group:engineers]
    roles: [shop/read]
"""


def test_mariadb_role_given_by_hand_is_found_and_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = require_mariadb()
    monkeypatch.setenv("JIT_DRIFT_MARIADB", url)
    with (
        scratch_database(url) as db,
        scratch_role(url, f"SELECT ON `{db}`.*") as role,
        scratch_user(url, "hunter2") as mallory,
    ):
        execute(url, f"GRANT `{role}` TO %s@'%%'", [mallory])  # behind jitaccess's back
        with container_on("sqlite", tmp_path, policy=MARIADB_POLICY.replace("ROLE", role)) as app:
            app.clock = SystemClock()
            request = granted(app, "shop/read")
            policy = app.current_policy()
            with app.uow.readonly() as uow:
                (grant,) = uow.grants.list(request_id=request.id)
            connector = app.connectors.for_target(policy.targets["shop"])
            ours = connector.account_of(access_of(policy, grant))
            (target,) = reconcile(app.uow, app.clock, app.connectors).targets
            hand_made = f"{mallory}@%"
            assert target.ok, target.error
            assert hand_made in target.unexplained and hand_made in target.removed
            assert ours not in target.unexplained
            assert role not in roles_of(url, mallory, "%")
            with app.uow.readonly() as uow:
                removed = [
                    r.entry.data["account"]
                    for r in uow.audit.iterate()
                    if r.entry.action == "drift.removed"
                ]
            assert hand_made in removed
            # The grant's own user still works and is explained on the next pass.
            again = reconcile(app.uow, app.clock, app.connectors).targets[0]
            assert hand_made not in again.unexplained and ours not in again.unexplained
            assert user_hosts(url, ours.split("@")[0]) == ["%"]
            # Leave nothing behind in the shared server: end the grant for real.
            with app.uow() as uow:
                end_grant(
                    uow,
                    app.clock,
                    grant_id=grant.id,
                    actor="alice",
                    reason=EndReason.DEACTIVATED,
                    comment="test over",
                )
            work(app)
            assert not user_hosts(
                url,
                app.connectors.for_target(app.current_policy().targets["shop"])
                .account_of(access_of(app.current_policy(), grant))
                .split("@")[0],
            )
