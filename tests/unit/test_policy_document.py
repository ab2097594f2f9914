"""A stored document built straight into a Policy equals what the YAML loader builds from it."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given

from jitaccess.adapters.policy_document import policy_from_document
from jitaccess.adapters.policy_yaml import load_policy_files, load_policy_text, policy_to_document
from jitaccess.domain.errors import PolicyInvalid
from jitaccess.domain.policy import Policy
from unit.test_policy_fuzz import FAST, mutated_documents
from unit.test_policy_yaml import PEOPLE, role

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "stored policy v7"


def stored_both_ways(document: Any) -> tuple[Policy, Policy]:
    """(built from the data, loaded through YAML as versions were before)."""
    via_yaml = load_policy_text(json.dumps(document, ensure_ascii=False), SOURCE, check_files=False)
    return policy_from_document(document, SOURCE), via_yaml


# --- every policy the repository ships or tests with -----------------------------------------
def _policy_texts(value: Any) -> Iterator[str]:
    """Multi-line strings in a YAML fixture that look like a policy."""
    if isinstance(value, str):
        if "\n" in value and ("roles:" in value or "users:" in value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _policy_texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _policy_texts(item)


def _fixtures() -> Iterator[tuple[str, str]]:
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = f"{path.relative_to(ROOT)}:{node.lineno}"
                for i, text in enumerate(_policy_texts(node.value)):
                    yield f"{name}:{i}", text
                if "\n" in node.value and ":" in node.value:
                    # The loader's tests write a role's body, or a section, after PEOPLE.
                    yield f"{name}:role", role(node.value)
                    yield f"{name}:people", PEOPLE + node.value
    for path in sorted((ROOT / "tests").rglob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:  # a deliberately broken fixture
            continue
        for i, text in enumerate(_policy_texts(data)):
            yield f"{path.relative_to(ROOT)}#{i}", text


def _valid_fixtures() -> list[tuple[str, Policy]]:
    """Those that load (placeholders, broken examples and fragments do not), once each."""
    found: dict[str, tuple[str, Policy]] = {}
    for name, text in _fixtures():
        try:
            policy = load_policy_text(text, "<fixture>", check_files=False)
        except PolicyInvalid:
            continue
        found.setdefault(json.dumps(policy_to_document(policy), sort_keys=True), (name, policy))
    return list(found.values())


SHIPPED = {
    "examples/policy.yaml": ["examples/policy.yaml"],
    "demo": ["src/jitaccess/demo/policy.yaml"],
    "demo + postgres": [
        "src/jitaccess/demo/policy.yaml",
        "src/jitaccess/demo/policy-postgres.yaml",
    ],
}
FIXTURES = _valid_fixtures()


@pytest.mark.parametrize("files", SHIPPED.values(), ids=SHIPPED.keys())
def test_a_shipped_policy_builds_equal_from_its_document(files: list[str]) -> None:
    policy, _ = load_policy_files([ROOT / file for file in files])
    built, via_yaml = stored_both_ways(policy_to_document(policy))
    assert built == via_yaml == policy


@pytest.mark.parametrize(("name", "policy"), FIXTURES, ids=[name for name, _ in FIXTURES])
def test_a_test_fixture_policy_builds_equal_from_its_document(name: str, policy: Policy) -> None:
    built, via_yaml = stored_both_ways(policy_to_document(policy))
    # Not `== policy` too: a relative schedule file is placed when stored, by both.
    assert built == via_yaml


def test_the_fixtures_cover_the_tests_policies() -> None:
    # A guard on the scan above: it keeps finding the suite's policies.
    assert len(FIXTURES) >= 40
    assert any(name.startswith("tests/scenarios/") for name, _ in FIXTURES)
    assert any("allowed_hours" in str(policy) for _, policy in FIXTURES)


# --- generated documents ---------------------------------------------------------------------
def _has_float(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return isinstance(value, float)


@FAST
@given(mutated_documents())
def test_a_generated_document_builds_as_yaml_loads_it(document: Any) -> None:
    """Valid mutations build equal, their canonical form too; invalid ones fail cleanly."""
    try:
        via_yaml = load_policy_text(json.dumps(document), SOURCE, check_files=False)
    except PolicyInvalid:
        via_yaml = None
    try:
        built: Policy | None = policy_from_document(document, SOURCE)
    except PolicyInvalid as exc:
        assert [p.file for p in exc.problems] == [SOURCE]
        built = None
    if via_yaml is None:
        return  # the builder checks less than the loader: either answer is fine
    # YAML reads a JSON float like 1e+16 as a string; a stored document never holds one.
    if not _has_float(document):
        assert built == via_yaml
    canonical = policy_to_document(via_yaml)
    assert stored_both_ways(canonical) == (via_yaml, via_yaml)


# --- corrupt documents -----------------------------------------------------------------------
VALID = policy_to_document(load_policy_files([ROOT / "examples" / "policy.yaml"])[0])


def corrupted(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(VALID))
    parent: Any = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("eligibility", 0, "principals"), "user:alice", "eligibility[0].principals"),
        (("eligibility", 0, "principals"), ["alice"], "eligibility[0].principals[0]"),
        (("eligibility", 0, "roles"), [], "eligibility[0].roles"),
        (("eligibility", 0, "until"), "soon", "eligibility[0].until"),
        (("eligibility", 1), ["not", "a", "row"], "eligibility[1]"),
        (("eligibility",), {"rows": 1}, "eligibility"),
        (("users", "alice", "groups"), "engineers", "users.alice.groups"),
        (("roles", "prod-db/readonly", "duration", "max"), "forever", "max"),
        (("roles", "prod-db/readonly", "grants"), {"k": 1.5}, "grants.k"),
        (("targets", "prod-db", "drift"), "ignore", "targets.prod-db.drift"),
        (("version",), 2, "version"),
    ],
)
def test_a_corrupt_document_fails_naming_the_version_and_the_key(
    path: tuple[Any, ...], value: Any, key: str
) -> None:
    with pytest.raises(PolicyInvalid) as raised:
        policy_from_document(corrupted(path, value), SOURCE)
    (problem,) = raised.value.problems
    assert problem.file == SOURCE
    assert problem.key.endswith(key)
    assert "stored document is unusable" in problem.reason


def test_a_document_that_is_not_a_mapping_fails_cleanly() -> None:
    with pytest.raises(PolicyInvalid, match="stored policy v7"):
        policy_from_document([VALID], SOURCE)


# --- what the built policy shares ------------------------------------------------------------
def test_rows_share_one_object_per_distinct_principal_and_role_list() -> None:
    document = dict(VALID)
    document["eligibility"] = [
        {"principals": ["user:alice"], "roles": ["prod-db/readonly"]} for _ in range(3)
    ] + [{"principals": ["user:alice", "group:dba"], "roles": ["prod-db/readonly"]}]
    rows = policy_from_document(document, SOURCE).eligibility
    assert rows[0] == rows[1] == rows[2]
    assert rows[0].principals is rows[1].principals is rows[2].principals
    assert rows[3].principals[0] is rows[0].principals[0]
    assert rows[0].roles is rows[3].roles
