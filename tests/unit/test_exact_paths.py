"""The app's index of exact paths leads each path and method where the app's own routing,
route after route, would: the first route that matches fully, in the order given."""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.routing import Match, Route
from starlette.types import Scope

from jitaccess.entrypoints.api.app import ExactPaths


async def _endpoint(_: object) -> PlainTextResponse:
    return PlainTextResponse("")


def _scope(path: str, method: str) -> Scope:
    return {"type": "http", "path": path, "root_path": "", "method": method}


def test_a_path_with_parameters_declared_first_keeps_its_paths() -> None:
    by_name = Route("/users/{name}", _endpoint, methods=["GET"])
    me = Route("/users/me", _endpoint, methods=["GET", "DELETE"])
    index = ExactPaths([by_name, me])

    match, child = index.matches(_scope("/users/me", "GET"))
    assert match is Match.FULL and child["route"] is by_name
    match, child = index.matches(_scope("/users/me", "DELETE"))
    assert match is Match.FULL and child["route"] is me


def test_anything_else_is_left_to_the_routing() -> None:
    index = ExactPaths([Route("/a", _endpoint, methods=["POST"])])

    assert index.matches(_scope("/a", "GET"))[0] is Match.NONE  # a 405 is the routing's
    assert index.matches(_scope("/b", "POST"))[0] is Match.NONE
    assert index.matches({**_scope("/a", "POST"), "root_path": "/mounted"})[0] is Match.NONE
    assert index.matches({"type": "websocket", "path": "/a", "root_path": ""})[0] is Match.NONE
