"""A third-party connector installed as its own package (tests/plugin_example): jitaccess finds it
through its entry point, the policy loader asks it about grants, and the worker drives it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

import pytest

from jitaccess.adapters.connectors.registry import GROUP, ConnectorRegistry
from jitaccess.adapters.policy_yaml import load_policy_text
from jitaccess.clock import FakeClock
from jitaccess.domain.errors import ConnectorError, PolicyInvalid
from jitaccess.domain.model import GrantState, Request
from jitaccess.domain.policy import ConnectionRef, Target
from jitaccess.ports import ExistingAccess
from jitaccess.services.fetch_credentials import fetch_credentials
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkerOptions, run_due_work
from support.databases import container_on

PLUGIN = Path(__file__).parents[1] / "plugin_example"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _plugin_installed() -> None:
    if not any(ep.name == "example" for ep in entry_points(group=GROUP)):
        _unavailable(f"example plugin not installed: run .venv/bin/pip install -e {PLUGIN}")


POLICY = """\
admins: [group:security]
users:
  alice: {{groups: [engineers]}}
  sam: {{groups: [security]}}
targets:
  directory:
    type: example
    connection: {{file: {key}}}
    options: {{path: {path}}}
roles:
  directory/ops:
    target: directory
    grants: {{example_groups: {groups}}}
    duration: {{default: 10m, max: 1h}}
eligibility:
  - principals: [group:engineers]
    roles: [directory/ops]
"""


def setup_directory(tmp_path: Path, accounts: dict[str, Any]) -> tuple[Path, Path]:
    """The "target": a JSON file that accepts one admin key; returns (key file, directory)."""
    admin_key = secrets.token_urlsafe(16)
    key = tmp_path / "admin.key"
    key.write_text(admin_key + "\n")
    path = tmp_path / "directory.json"
    digest = hashlib.sha256(admin_key.encode()).hexdigest()
    path.write_text(json.dumps({"admin_key_sha256": digest, "accounts": accounts}))
    return key, path


def accounts(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(path.read_text())["accounts"]
    return found


def test_jitaccess_finds_the_plugin_through_its_entry_point() -> None:
    (entry,) = [ep for ep in entry_points(group=GROUP) if ep.name == "example"]
    registry = ConnectorRegistry()

    assert entry.value == "jitaccess_example_plugin:ExampleConnector"
    assert registry.types()["example"] is entry.load()
    assert registry.per_grant_account(Target("d", "example")) is True
    assert registry.required_params(Target("d", "example")) == ()


def test_the_policy_loader_refuses_a_bad_grant_at_its_file_and_line(tmp_path: Path) -> None:
    key, path = setup_directory(tmp_path, {})
    text = POLICY.format(key=key, path=path, groups="[ops, Not-A-Group]")

    with pytest.raises(PolicyInvalid) as caught:
        load_policy_text(text, "directory.yaml")

    (problem,) = caught.value.problems
    grants_line = 1 + text.splitlines().index("    grants: {example_groups: [ops, Not-A-Group]}")
    assert (problem.file, problem.line) == ("directory.yaml", grants_line)
    assert problem.key == "roles.directory/ops.grants.example_groups"
    assert "'Not-A-Group' is not a group name" in problem.reason
    unknown = POLICY.format(key=key, path=path, groups="[ops]").replace(
        "{example_groups: [ops]}", "{example_groups: [ops], color: red}"
    )
    with pytest.raises(PolicyInvalid, match=re.escape("grants.color: unknown key")):
        load_policy_text(unknown, "directory.yaml")


def test_a_grant_lives_in_the_target_from_provision_to_expiry(tmp_path: Path) -> None:
    hand_made = {
        "carol": {"groups": ["ops", "coffee"], "principal": "carol"},
        "dave": {"groups": ["coffee"]},
    }
    key, path = setup_directory(tmp_path, hand_made)
    clock = FakeClock()
    policy = POLICY.format(key=key, path=path, groups="[ops, deploy]")
    options = WorkerOptions(jitter=lambda: 1.0)
    with container_on("sqlite", tmp_path, policy=policy, clock=clock) as app:
        target = app.current_policy().targets["directory"]
        connector = app.connectors.for_target(target)
        connector.check()
        with app.uow() as uow:
            request = request_access(
                uow,
                clock,
                app.connectors,
                requester="alice",
                roles=["directory/ops"],
                duration=timedelta(minutes=10),
                justification="on call",
            )
        assert isinstance(request, Request)
        (grant_id,) = request.grant_ids

        run_due_work(app.uow, clock, app.connectors, app.box, options)

        with app.uow() as uow:
            credentials = fetch_credentials(
                uow, clock, app.box, grant_id=grant_id, principal="alice"
            )
        account = credentials["username"]
        entry = accounts(path)[account]
        assert account.startswith("jit_alice_") and account.endswith(grant_id[-8:])
        assert entry["groups"] == ["deploy", "ops"] and entry["grant_id"] == grant_id
        assert entry["token_sha256"] == hashlib.sha256(credentials["token"].encode()).hexdigest()

        # Drift: the grant's account and carol's hand-made membership of a governed group.
        governed = [role.grants_dict() for role in app.current_policy().roles.values()]
        found = connector.list_access(governed)
        assert [(e.account, e.grant_id) for e in found] == [("carol", None), (account, grant_id)]
        carol = found[0]
        assert carol == ExistingAccess("carol", "carol", None, {"groups": ["ops"]})
        connector.remove(carol)
        assert accounts(path)["carol"]["groups"] == ["coffee"]
        assert [e.account for e in connector.list_access(governed)] == [account]

        clock.advance(timedelta(minutes=10))
        run_due_work(app.uow, clock, app.connectors, app.box, options)
        with app.uow.readonly() as uow:
            grant = uow.grants.get(grant_id)

    assert grant is not None and grant.state is GrantState.EXPIRED
    assert set(accounts(path)) == {"carol", "dave"}


def test_a_wrong_admin_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    _key, path = setup_directory(tmp_path, {})
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-key-0123")
    target = Target("directory", "example", ConnectionRef(file=str(wrong)), (("path", str(path)),))
    connector = ConnectorRegistry().for_target(target)

    with pytest.raises(ConnectorError, match="the admin key is not the one") as caught:
        connector.check()

    assert "not-the-key-0123" not in str(caught.value)
