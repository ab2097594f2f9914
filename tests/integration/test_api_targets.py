"""Targets, drift and reconcile through the REST API and the CLI, on both stores."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jitaccess.adapters.connectors.fake import FakeConnector
from jitaccess.entrypoints import cli_targets
from jitaccess.entrypoints.cli import app as cli_app
from jitaccess.entrypoints.cli_client import Client
from support.api import Api, TestClient, active_read_grant, assert_problem


def fake(api: Api) -> FakeConnector:
    target = api.container.current_policy().targets["demo"]
    connector = api.container.connectors.for_target(target)
    assert isinstance(connector, FakeConnector)
    return connector


def test_reconcile_is_for_admins_and_drift_for_readers(api: Api) -> None:
    active_read_grant(api)
    account = fake(api).plant("mallory", "demo/read")
    for who in ("alice", "erin"):
        assert_problem(api.post(who, "/api/v1/reconcile"), 403, "forbidden")
    assert_problem(api.get("alice", "/api/v1/drift"), 403, "forbidden")
    report = api.post("sec", "/api/v1/reconcile")
    assert report.status_code == 200, report.text
    assert report.json()["unexplained"] == 1
    assert report.json()["targets"][0]["unexplained"] == [account]
    (finding,) = api.get("erin", "/api/v1/drift").json()["items"]
    assert (finding["account"], finding["kind"], finding["state"]) == (
        account,
        "unexplained",
        "open",
    )
    assert api.get("erin", "/api/v1/drift", state="removed").json()["items"] == []
    assert_problem(api.post("sec", "/api/v1/reconcile?target=nowhere"), 404, "not-found")
    found = [r for r in api.audit() if r["action"] == "drift.found"]
    assert found and found[0]["actor"] == "sec"


def test_targets_show_health_and_open_drift(api: Api) -> None:
    before = api.get("erin", "/api/v1/targets").json()["items"]
    assert [(t["name"], t["type"], t["ok"]) for t in before] == [("demo", "fake", None)]
    assert_problem(api.get("erin", "/api/v1/targets", check="true"), 403, "forbidden")
    assert_problem(api.get("alice", "/api/v1/targets"), 403, "forbidden")
    fake(api).failing = True
    (failing,) = api.get("sec", "/api/v1/targets", check="true").json()["items"]
    assert (failing["ok"], failing["error"]) == (False, "ConnectorError: fake target is down")
    fake(api).failing = False
    fake(api).plant("mallory", "demo/read")
    api.post("sec", "/api/v1/reconcile")
    (healthy,) = api.get("sec", "/api/v1/targets", check="true").json()["items"]
    assert (healthy["ok"], healthy["open_drift"]) == (True, 1)
    assert healthy["reconciled_at"] is not None


def test_ssh_endpoints_say_when_there_is_no_ssh_target(api: Api) -> None:
    assert_problem(api.client.get("/api/v1/ssh/ca"), 404, "not-found")
    assert_problem(api.client.get("/api/v1/ssh/krl"), 404, "not-found")


def test_cli_targets_drift_reconcile(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def client() -> Client:
        real = Client(url="http://testserver", token=api.tokens["sec"])
        real.http = TestClient(
            api.client.app, base_url="http://testserver/api/v1", headers=api.auth("sec")
        )
        return real

    monkeypatch.setattr(cli_targets, "Client", client)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    fake(api).plant("mallory", "demo/read")
    reconciled = runner.invoke(cli_app, ["reconcile"])
    assert reconciled.exit_code == 0, reconciled.output
    assert "mallory@demo/read" in reconciled.output
    drift = runner.invoke(cli_app, ["drift", "--json"])
    assert json.loads(drift.output)["items"][0]["account"] == "mallory@demo/read"
    targets = runner.invoke(cli_app, ["targets", "--check"])
    assert targets.exit_code == 0 and "ok" in targets.output and "demo" in targets.output
