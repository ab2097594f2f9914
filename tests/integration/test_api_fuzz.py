"""Schemathesis against the app's own /openapi.json: every operation gets generated input, sent as
an admin, a requester, an approver, an auditor or with a made-up token, on SQLite and PostgreSQL.
No answer may be a 5xx or stray from the document, and every error must be a problem.

The budget is fixed for CI: a set seed, derandomized generation, a few dozen cases per operation
and one database per store for the whole module, whose state carries over from test to test.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
from schemathesis import CheckContext, CheckFunction, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from jitaccess.entrypoints.api import create_app
from support.api import (
    ADMIN_ASK,
    PEOPLE,
    PROBLEM,
    Api,
    TestClient,
    _api_on,
    active_read_grant,
    approved_admin_grant,
    assert_problem,
    make_container,
)
from support.databases import database_url

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

# Cases per operation in the fuzzing phase, for reads and for changes. The coverage phase adds
# its own fixed set of boundary and malformed cases (about 25 per operation), the examples phase
# one or two.
MAX_EXAMPLES = 30
MAX_CHANGE_EXAMPLES = 80

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20_240_605,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            # No example database: a CI run must not depend on what an earlier run left behind.
            "database": "none",
        },
        # Changes reach deeper than reads (services, the audit log): they get more of the budget.
        "operations": [
            {
                "include-method": ["POST", "PUT", "DELETE"],
                "generation": {"max-examples": MAX_CHANGE_EXAMPLES},
            }
        ],
    }
)

# Who sends a case: admin, requester, approver of demo/admin, auditor, or None for the
# `Authorization` schemathesis made up (a bad token; no header at all in some negative cases).
CALLERS: tuple[str | None, ...] = ("sec", "alice", "bob", "erin", None)


def _served_schema() -> OpenApiSchema:
    """The document as the app serves it. Building the routes needs a container, not a database,
    so this one is thrown away at once; every case goes to the app of its store instead."""
    with tempfile.TemporaryDirectory() as tmp:
        container = make_container(Path(tmp))
        try:
            app = create_app(container)
            return schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
        finally:
            container.close()


schema = _served_schema()


def problem_details_for_every_error(
    ctx: CheckContext, response: Response, case: OpenApiCase
) -> bool | None:
    """RFC 9457: every 4xx and 5xx, documented or not, is problem+json with its core members."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith(PROBLEM):
        raise AssertionError(f"a {response.status_code} came as {content_type!r}, not {PROBLEM}")
    if case.method.upper() == "HEAD":
        return None  # no body to look at
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"a {response.status_code} whose body is not JSON") from None
    if not isinstance(body, dict) or body.get("status") != response.status_code:
        raise AssertionError(f"the problem's status is not {response.status_code}: {body!r}")
    missing = [key for key in ("type", "title", "detail") if not isinstance(body.get(key), str)]
    if missing:
        raise AssertionError(f"the problem lacks {', '.join(missing)}")
    return None


CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    problem_details_for_every_error,
    # A 2xx with a token must not also be a 2xx without one.
    ignored_auth,
    # A method the path does not have: 405, with an `Allow` naming the ones it has.
    unsupported_method,
    allow_header_conformance,
    # Not run: positive_data_acceptance and negative_data_rejection. The document cannot say
    # what the domain refuses (a duration of "", a role nobody may ask for), which is a
    # documented 422, and FastAPI ignores query parameters it does not know, as is usual.
]
# `DELETE /mfa/{principal}` also matches these paths (for people named "enroll" or "confirm"), so
# their `Allow` rightly names DELETE, which the document lists under the template only.
SHADOWED_BY_MFA_RESET = frozenset({"/api/v1/mfa/enroll", "/api/v1/mfa/confirm"})


@dataclass(frozen=True)
class Fuzzed:
    api: Api
    # Values that name something real, by parameter or body member name.
    known: Mapping[str, Sequence[Any]]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    """One app per store for the whole module, holding requests and grants worth poking at."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    with database_url(request.param, tmp_path) as url:
        # Built as the `api` fixture builds it (and closed after the last test of the module).
        for api in _api_on(tmp_path, url):
            pending = [api.ask("alice", ADMIN_ASK)["id"] for _ in range(3)]
            grants = [approved_admin_grant(api), active_read_grant(api)]
            decided = [api.grant("alice", grant)["request_id"] for grant in grants]
            roles = ["demo/read", "demo/admin"]
            yield Fuzzed(
                api,
                {
                    "request_id": pending + decided,
                    "grant_id": grants,
                    "principal": PEOPLE,
                    "role": roles,
                    "roles": [[role] for role in roles] + [roles],
                    "target": ["demo"],
                },
            )


def _fingerprint(case: OpenApiCase, salt: str) -> int:
    """A number that depends on the generated input only, so a case always gets the same caller
    and the same substitutions (shrinking and replays see what the first run saw)."""
    body = case.body if isinstance(case.body, (dict, list, str, int, float)) else None
    data = [salt, case.path_parameters, case.query, body]
    return zlib.crc32(json.dumps(data, sort_keys=True, default=str).encode())


def _aim_at_known_values(case: OpenApiCase, known: Mapping[str, Sequence[Any]]) -> None:
    """Made-up ids and role names name nothing, so only 404s and 422s would come back. Valid-
    shaped cases are sent to a real object or role instead, most of the time; malformed ones
    stay as generated, to be refused."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    body = case.body if isinstance(case.body, dict) else {}
    for values in (case.path_parameters, case.query, body):
        for name, value in list(values.items()):
            choices = known.get(name, ())
            pick = _fingerprint(case, name) % (len(choices) + 1)
            if pick < len(choices):
                chosen = choices[pick]
                wants_list = isinstance(value, list) and not isinstance(chosen, list)
                values[name] = [chosen] if wants_list else chosen


@pytest.mark.timeout(60)
@schema.parametrize()
def test_every_operation_answers_as_documented(case: OpenApiCase, fuzzed: Fuzzed) -> None:
    caller = CALLERS[_fingerprint(case, "caller") % len(CALLERS)]
    _aim_at_known_values(case, fuzzed.known)
    # A failure's curl shows the token as [Filtered]; this header says whose it is (negative
    # cases that test a missing `Authorization` drop that header all the same).
    headers = {"X-Fuzz-Caller": caller or "made-up token"}
    if caller:
        headers["Authorization"] = f"Bearer {fuzzed.api.tokens[caller]}"
    checks = CHECKS
    if case.operation.path in SHADOWED_BY_MFA_RESET:
        checks = [check for check in CHECKS if check is not allow_header_conformance]
    case.call_and_validate(app=fuzzed.api.client.app, headers=headers, checks=checks)


def test_inputs_the_fuzzer_found_get_a_documented_problem(api: Api) -> None:
    """Found by the test above, or by probing next to what it found: each of these was a 500,
    a 503 or an undocumented status before."""
    pending = api.ask("alice", ADMIN_ASK)["id"]
    active_read_grant(api)  # a live grant: a policy without demo/read is refused
    raw_json = {**api.auth("bob"), "Content-Type": "application/json"}
    not_utf8: httpx.Response = api.client.post(
        f"/api/v1/requests/{pending}/approve", headers=raw_json, content=b"\xff"
    )
    empty_policy: httpx.Response = api.client.put(
        "/api/v1/policy",
        headers={**api.auth("sec"), "Content-Type": "application/yaml"},
        content=b"version: 1",
    )
    unknown_target = api.post("sec", "/api/v1/reconcile?target=nowhere")
    nul_in_query = api.get("sec", "/api/v1/check", role="demo/read\x00")

    assert_problem(api.get("erin", "/api/v1/audit", after=str(2**70)), 422, "invalid-input")
    too_long = {"roles": ["demo/read"], "duration": "999999999999d"}
    assert_problem(api.post("alice", "/api/v1/requests", too_long), 422, "invalid-input")
    too_early = "0001-01-01T00:00:00+14:00"  # before 0001-01-01 in UTC
    assert_problem(api.get("alice", "/api/v1/notifications", since=too_early), 422, "invalid-input")
    with_nul = {"comment": "fine\x00"}
    approved_with_nul = api.post("bob", f"/api/v1/requests/{pending}/approve", with_nul)
    assert_problem(approved_with_nul, 422, "invalid-input")
    assert_problem(not_utf8, 422, "invalid-input")
    assert_problem(empty_policy, 409, "conflict")
    assert_problem(unknown_target, 404, "not-found")
    documented = api.client.get("/openapi.json").json()["paths"]
    assert "409" in documented["/api/v1/policy"]["put"]["responses"]
    assert "404" in documented["/api/v1/reconcile"]["post"]["responses"]
    # PostgreSQL refuses a NUL in text (SQLite stores it): a 422 there, no longer a 503.
    if api.container.engine.dialect.name == "postgresql":
        assert_problem(nul_in_query, 422, "invalid-input")
    else:
        assert nul_in_query.status_code == 200


def test_a_wrong_method_is_answered_with_every_method_of_the_path(tmp_path: Path) -> None:
    container = make_container(tmp_path)  # routing answers before any database is asked
    with TestClient(create_app(container)) as client:
        wrong_method: httpx.Response = client.request("OPTIONS", "/api/v1/policy")
    container.close()

    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET, PUT"
