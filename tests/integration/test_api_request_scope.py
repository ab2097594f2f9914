"""The request's own work on the API: the token is looked up where the route runs, yet comes
first (a bad token is a 401 whatever else is wrong with the request), and a request takes one
pooled connection at a time, its reads sharing the authentication's. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from jitaccess.entrypoints.api import create_app
from jitaccess.services.manage_tokens import revoke_token
from support.api import ADMIN_ASK, Api, TestClient, assert_problem, make_container

BAD_TOKENS = ("jit_nobody-has-this-token", "not-even-ours", None)


# What is wrong besides the token: a missing query parameter, one out of range, a body of the
# wrong shape, a body a dependency refuses (PUT /policy of an unknown content type).
INVALID: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("GET", "/api/v1/check", {}),
    ("GET", "/api/v1/audit", {"params": {"limit": 0}}),
    ("POST", "/api/v1/requests", {"json": {"roles": "demo/read", "duration": 5}}),
    ("PUT", "/api/v1/policy", {"content": b"x", "headers": {"Content-Type": "image/png"}}),
)


@pytest.mark.parametrize(("method", "url", "kwargs"), INVALID)
def test_a_bad_token_is_a_401_before_anything_else_is_looked_at(
    api: Api, method: str, url: str, kwargs: dict[str, Any]
) -> None:
    for token in BAD_TOKENS:
        headers = {**kwargs.get("headers", {})}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        args = {**kwargs, "headers": headers}
        response = api.client.request(method, url, **args)
        assert_problem(response, 401, "unauthenticated")

    with_token = {**kwargs, "headers": {**kwargs.get("headers", {}), **api.auth("sec")}}
    assert_problem(api.client.request(method, url, **with_token), 422, "invalid-input")


def test_a_revoked_token_is_refused_on_reads_and_writes(api: Api) -> None:
    token_id = _token_id(api, "alice")
    with api.container.uow() as uow:
        revoke_token(uow, api.clock, token_id=token_id, actor="test")

    assert_problem(api.get("alice", "/api/v1/check", role="demo/read"), 401, "unauthenticated")
    assert_problem(api.post("alice", "/api/v1/requests", ADMIN_ASK), 401, "unauthenticated")
    assert_problem(api.get("alice", "/api/v1/check"), 401, "unauthenticated")  # and no role
    assert api.get("bob", "/api/v1/check", role="demo/read").status_code == 200


def _token_id(api: Api, principal: str) -> str:
    with api.container.uow.readonly() as uow:
        (token,) = uow.tokens.list(principal)
    return token.id


@contextmanager
def _connections(api: Api) -> Iterator[dict[str, int]]:
    """How many pooled connections the app checked out, and the most it held at once."""
    counts = {"checkouts": 0, "held": 0, "most": 0}
    lock = threading.Lock()

    def checkout(*_: object) -> None:
        with lock:
            counts["checkouts"] += 1
            counts["held"] += 1
            counts["most"] = max(counts["most"], counts["held"])

    def checkin(*_: object) -> None:
        with lock:
            counts["held"] -= 1

    pool = api.container.engine.pool
    event.listen(pool, "checkout", checkout)
    event.listen(pool, "checkin", checkin)
    try:
        yield counts
    finally:
        event.remove(pool, "checkout", checkout)
        event.remove(pool, "checkin", checkin)


@pytest.mark.parametrize(
    ("who", "url", "params"),
    [
        ("alice", "/api/v1/check", {"role": "demo/read"}),
        ("erin", "/api/v1/check", {"role": "demo/read", "principal": "alice"}),
        ("alice", "/api/v1/grants", {}),
        ("erin", "/api/v1/audit", {"tail": 5}),
    ],
)
def test_a_read_takes_one_connection_for_the_token_and_the_route(
    api: Api, who: str, url: str, params: dict[str, Any]
) -> None:
    api.get(who, url, **params)  # the policy is loaded and cached by now
    with _connections(api) as counts:
        response = api.get(who, url, **params)

    assert response.status_code == 200, response.text
    assert counts == {"checkouts": 1, "held": 0, "most": 1}


def test_a_write_holds_one_connection_at_a_time(api: Api) -> None:
    with _connections(api) as counts:
        created = api.ask("alice", ADMIN_ASK)

    assert created["state"] == "pending"
    assert counts["checkouts"] == 2  # the token's lookup, then the change
    assert counts["most"] == 1 and counts["held"] == 0


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_database_out_of_reach_is_a_503_for_reads_writes_and_invalid_input(
    kind: str, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'no-such-dir' / 'jit.db'}"
        if kind == "sqlite"
        else "postgresql://postgres@127.0.0.1:1/jitaccess"
    )
    container = make_container(tmp_path, url)
    headers = {"Authorization": "Bearer jit_x"}
    with TestClient(create_app(container)) as client:
        responses = [
            client.get("/api/v1/check", params={"role": "demo/read"}, headers=headers),
            client.get("/api/v1/check", headers=headers),  # no role: the token still first
            client.post("/api/v1/requests", json=ADMIN_ASK, headers=headers),
        ]
    container.close()

    for response in responses:
        body = assert_problem(response, 503, "unavailable")
        assert body["detail"] == "database unavailable"
        assert "127.0.0.1" not in response.text and "no-such-dir" not in response.text
