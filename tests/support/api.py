"""The REST API over a real database, for the API tests: the test policy and people, a client
that speaks as each of them, the `api` fixture (every test runs on SQLite and on PostgreSQL), and
the helpers the tests share. The worker is driven by hand with a fake clock."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from jitaccess.bootstrap import Container, apply_policy_files, build, upgrade
from jitaccess.clock import FakeClock
from jitaccess.entrypoints.api import create_app
from jitaccess.services.manage_tokens import create_token
from jitaccess.services.run_due_work import WorkerOptions, WorkReport, run_due_work
from jitaccess.settings import Settings
from support.databases import database_url

with warnings.catch_warnings():
    # Starlette 1.x asks for `httpx2` behind its TestClient; the project ships plain httpx,
    # which still works. Without this, warnings-as-errors fails the import itself.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient as TestClient  # the test modules import it here

PROBLEM = "application/problem+json"
PEOPLE = ("alice", "bob", "carol", "erin", "sec")

POLICY = """\
version: 1
admins: [group:security]
auditors: [user:erin]
users:
  alice: {email: alice@example.com, groups: [engineers]}
  bob: {email: bob@example.com, groups: [dba]}
  carol: {email: carol@example.com}
  erin: {email: erin@example.com}
  sec: {groups: [security]}
targets:
  demo:
    type: fake
roles:
  demo/read:
    target: demo
    grants: {fake_roles: [reader]}
    duration: {default: 30m, max: 2h}
  demo/admin:
    target: demo
    grants: {fake_roles: [admin]}
    duration: {default: 30m, max: 4h}
    require: {justification: true, ticket: '^INC-[0-9]+$'}
    approval:
      stages:
        - name: dba
          approvers: [group:dba]
          min_approvals: 1
eligibility:
  - principals: [group:engineers]
    roles: [demo/read, demo/admin]
"""

# Line 17 (1-based) is the `duration` of demo/read; the bad document breaks it there.
BAD_POLICY = POLICY.replace(
    "duration: {default: 30m, max: 2h}", "duration: {default: 30m, max: forever}"
)
BAD_LINE = POLICY.splitlines().index("    duration: {default: 30m, max: 2h}") + 1

ADMIN_ASK = {
    "roles": ["demo/admin"],
    "duration": "1h",
    "justification": "rotate the keys",
    "ticket": "INC-42",
}


@dataclass
class Api:
    client: TestClient
    container: Container
    clock: FakeClock
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    # TestClient is typed against httpx2, which is not installed: say what comes back.
    def get(self, who: str, url: str, **params: Any) -> httpx.Response:
        response: httpx.Response = self.client.get(url, headers=self.auth(who), params=params)
        return response

    def post(self, who: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        response: httpx.Response = self.client.post(url, headers=self.auth(who), json=body)
        return response

    def ask(self, who: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.post(who, "/api/v1/requests", body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def work(self) -> WorkReport:
        c = self.container
        return run_due_work(c.uow, c.clock, c.connectors, c.box, WorkerOptions())

    def grant(self, who: str, grant_id: str) -> dict[str, Any]:
        response = self.get(who, f"/api/v1/grants/{grant_id}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def audit(self) -> list[dict[str, Any]]:
        response = self.get("erin", "/api/v1/audit")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def policy_version(self) -> int:
        version: int = self.get("alice", "/api/v1/policy").json()["version"]
        return version


def make_container(tmp_path: Path, database_url: str | None = None) -> Container:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url or f"sqlite:///{tmp_path}/t.db",
        run_worker=False,
    )
    return build(settings, clock=FakeClock())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """Every API test runs on both stores: SQLite in tmp_path, a scratch PostgreSQL database."""
    with database_url(request.param, tmp_path) as url:
        yield from _api_on(tmp_path, url)


def _api_on(tmp_path: Path, url: str) -> Iterator[Api]:
    container = make_container(tmp_path, url)
    upgrade(container)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    apply_policy_files(container, [str(policy_file)])
    tokens = {}
    for person in PEOPLE:
        with container.uow() as uow:
            _, tokens[person] = create_token(
                uow, container.clock, principal=person, created_by="test"
            )
    assert isinstance(container.clock, FakeClock)
    with TestClient(create_app(container)) as client:
        yield Api(client, container, container.clock, tokens)
    container.close()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://jitaccess.dev/problems/{code}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def approved_admin_grant(api: Api) -> str:
    request = api.ask("alice", ADMIN_ASK)
    approved = api.post("bob", f"/api/v1/requests/{request['id']}/approve", {"comment": "ok"})
    assert approved.status_code == 200, approved.text
    grant_id: str = approved.json()["grants"][0]
    return grant_id


def active_read_grant(api: Api) -> str:
    request = api.ask("alice", {"roles": ["demo/read"], "duration": "30m"})
    grant_id: str = request["grants"][0]
    api.work()
    assert api.grant("alice", grant_id)["state"] == "active"
    return grant_id
