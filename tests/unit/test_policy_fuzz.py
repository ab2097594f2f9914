"""Whatever text arrives, the loader answers with a Policy or PolicyInvalid, never a crash."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitaccess.adapters.policy_yaml import (
    load_policy_files,
    load_policy_text,
    policy_digest,
    policy_to_document,
)
from jitaccess.domain.errors import PolicyInvalid
from jitaccess.domain.policy import Policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
VALID: dict[str, Any] = policy_to_document(load_policy_files([EXAMPLE])[0])
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Keys the schema knows, so renames often land on a real (but misplaced) key.
KNOWN_KEYS = sorted(
    {"users", "targets", "roles", "eligibility", "admins", "auditors", "version", "type"}
    | {"connection", "env", "file", "options", "target", "grants", "duration", "default"}
    | {"max", "min", "require", "ticket", "mfa", "approval", "stages", "name", "approvers"}
    | {"min_approvals", "escalate_after", "escalate_to", "principals", "from", "until"}
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["1h", "PT1H", "user:alice", "group:dba", "2027-06-30", "postgres"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def outcome(text: str) -> Policy | None:
    """Load `text`; anything but a Policy or PolicyInvalid fails the test."""
    try:
        policy = load_policy_text(text, "fuzz.yaml")
    except PolicyInvalid as exc:
        assert exc.problems
        assert all(p.line >= 1 and p.file == "fuzz.yaml" for p in exc.problems)
        return None
    # Whatever loads must survive the trip through its canonical document.
    # as storage does it: JSON without ASCII escapes (YAML reads \\u surrogate pairs apart)
    assert load_policy_text(json.dumps(policy_to_document(policy), ensure_ascii=False)) == policy
    policy_digest(policy)
    return policy


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += paths(item, (*prefix, index))
    return out


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    doc: Any = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        candidates = paths(doc)
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent, last = parent_of(doc, path), path[-1]
        action = draw(st.sampled_from(["drop", "replace", "rename"]))
        if action == "drop":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(json_values)
        elif isinstance(parent, dict):
            new_key = draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8))
            parent[new_key] = parent.pop(last)
    return doc


# YAML that JSON cannot say, which the mutations above never produce: tags, aliases and anchors,
# keys that are not strings, dates, special numbers, deep nesting. The loader walks YAML nodes
# itself, so this is where a crash would hide. (Flow style only: each lands on one line.)
YAML_ONLY = [
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!python/object:os.system {}",
    "!!str 1",
    "!!int x",
    "2027-06-30",
    "2027-06-30T12:00:00Z",
    ".inf",
    "-.nan",
    "0x1F",
    "1_000",
    "99999999999999999999999",
    "99999999999999999999d",
    "*undefined",
    "&anchor [1, 2]",
    "[a, b]",
    "{a: b}",
    "1",
    "null",
    "~",
    "true",
    '"\\0"',
    '"\\ud800"',
    "[" * 300 + "]" * 300,
]
RAW = "fuzz-raw-yaml"  # dumped as a plain scalar, then replaced by the raw YAML


@st.composite
def documents_with_yaml_only_parts(draw: st.DrawFn) -> str:
    doc: Any = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        path = draw(st.sampled_from(paths(doc)))
        parent, last = parent_of(doc, path), path[-1]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent[RAW] = parent.pop(last)  # as a key
        else:
            parent[last] = RAW
    text = yaml.safe_dump(doc, width=10_000)
    while RAW in text:
        text = text.replace(RAW, draw(st.sampled_from(YAML_ONLY)), 1)
    return text


@FAST
@given(documents_with_yaml_only_parts())
def test_yaml_only_constructs_give_a_policy_or_policy_invalid(text: str) -> None:
    outcome(text)


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text_gives_a_policy_or_policy_invalid(text: str) -> None:
    outcome(text)


@FAST
@given(mutated_documents(), st.booleans())
def test_mutated_documents_give_a_policy_or_policy_invalid(doc: Any, as_yaml: bool) -> None:
    text = yaml.safe_dump(doc) if as_yaml else json.dumps(doc)
    outcome(text)


@FAST
@given(st.lists(st.sampled_from(EXAMPLE.read_text().splitlines()), max_size=40))
def test_shuffled_example_lines_give_a_policy_or_policy_invalid(lines: list[str]) -> None:
    outcome("\n".join(lines))


def test_the_unmutated_document_loads() -> None:
    assert outcome(json.dumps(VALID)) is not None
