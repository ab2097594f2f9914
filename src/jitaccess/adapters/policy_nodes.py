"""Generic readers for composed YAML nodes: typed scalars, mappings, lists and principal refs.

Each bad value becomes a problem with its file, line and key path, and reading carries on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from jitaccess.domain.durations import parse_duration
from jitaccess.domain.errors import PolicyProblem
from jitaccess.domain.policy import PrincipalRef

T = TypeVar("T")
Fields = dict[str, tuple[Node, Node]]

_TAG = "tag:yaml.org,2002:"
STR, INT, BOOL, NULL, FLOAT, TIMESTAMP, MAP, SEQ, MERGE = (
    _TAG + t for t in ("str", "int", "bool", "null", "float", "timestamp", "map", "seq", "merge")
)
_TAG_WORDS = {
    STR: "a string",
    INT: "an integer",
    BOOL: "a boolean",
    NULL: "nothing (null)",
    FLOAT: "a number with a fraction",
    TIMESTAMP: "a date",
}


@dataclass(frozen=True)
class Rule:
    """A name pattern and how to explain it to the person who broke it."""

    pattern: re.Pattern[str]
    explain: str


USER_NAME = Rule(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}"),
    "letters, digits, '.', '_', '@', '-'; at most 64, starting with a letter or digit",
)
GROUP_NAME = USER_NAME

INLINE_SECRET = (
    "credentials must be referenced by env or file, never inline: "
    "use connection: {env: VAR} or connection: {file: PATH}"
)
# Keys that would put a credential into the policy text, which is stored and audited verbatim.
SECRET_KEYS = frozenset({"password", "passwd", "url", "uri", "dsn", "secret", "token", "api_key"})
# In options and grants a URL may be plain configuration (a webhook endpoint), so only the
# other names are refused there, and any URL carrying a password.
_VALUE_SECRET_KEYS = SECRET_KEYS - {"url", "uri"}
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@:]*:[^/\s@]+@", re.IGNORECASE)

_INTS = SafeConstructor()  # only its YAML 1.1 integer spelling rules (0x1f, 1_000) are used


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    key: str

    def problem(self, reason: str) -> PolicyProblem:
        return PolicyProblem(self.file, self.line, self.key, reason)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def describe(node: Node) -> str:
    # An explicit tag (!!set, !!python/...) is never silently dropped: it is named instead.
    if isinstance(node, MappingNode) and node.tag == MAP:
        return "a mapping"
    if isinstance(node, SequenceNode) and node.tag == SEQ:
        return "a list"
    return _TAG_WORDS.get(node.tag, f"a value tagged {node.tag}")


def is_tag(node: Node, tag: str) -> bool:
    return isinstance(node, ScalarNode) and node.tag == tag


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class NodeReader:
    """Reads typed values from one file's nodes; problems and principal refs land in the lists."""

    def __init__(
        self,
        file: str,
        problems: list[PolicyProblem],
        principal_refs: list[tuple[PrincipalRef, Loc]],
    ) -> None:
        self.file = file
        self.problems = problems
        self.principal_refs = principal_refs

    # --- plumbing ---------------------------------------------------------------------------
    def loc(self, node: Node, key: str) -> Loc:
        return Loc(self.file, node.start_mark.line + 1, key)

    def problem(self, node: Node, key: str, reason: str) -> None:
        self.problems.append(self.loc(node, key).problem(reason))

    def mapping(
        self, node: Node, path: str, allowed: tuple[str, ...] | None, *, nullable: bool = False
    ) -> Fields | None:
        """Keys to (key node, value node); `allowed=None` for name-keyed sections."""
        if nullable and is_tag(node, NULL):
            return {}
        if not isinstance(node, MappingNode) or node.tag != MAP:
            self.problem(node, path, f"expected a mapping, got {describe(node)}")
            return None
        out: Fields = {}
        for key_node, value_node in node.value:
            if not is_tag(key_node, STR):
                hint = " (quote it)" if isinstance(key_node, ScalarNode) else ""
                reason = f"keys must be strings, got {describe(key_node)}{hint}"
                if is_tag(key_node, MERGE):
                    reason = "merge keys (<<) are not supported: write the keys out"
                self.problem(key_node, path, reason)
                continue
            name: str = key_node.value
            where = join(path, name)
            if name in out:
                self.problem(key_node, where, f"duplicate key '{name}'")
            elif allowed is not None and name not in allowed:
                if name in SECRET_KEYS:
                    self.problem(key_node, where, INLINE_SECRET)
                else:
                    expected = ", ".join(allowed)
                    self.problem(
                        key_node, where, f"unknown key '{name}' (expected one of: {expected})"
                    )
            else:
                out[name] = (key_node, value_node)
        return out

    def get(
        self, fields: Fields, key: str, path: str, parse: Callable[[Node, str], T | None]
    ) -> T | None:
        if key not in fields:
            return None
        return parse(fields[key][1], join(path, key))

    def required(self, fields: Fields, key: str, owner: Node, path: str) -> bool:
        if key in fields:
            return True
        self.problem(owner, join(path, key), f"missing required key '{key}'")
        return False

    def need(
        self, fields: Fields, key: str, owner: Node, path: str, parse: Callable[[Node, str], T]
    ) -> T | None:
        return (
            self.get(fields, key, path, parse) if self.required(fields, key, owner, path) else None
        )

    def checked(self, rule: Rule, what: str) -> Callable[[Node, str], str | None]:
        return lambda node, path: self.text(node, path, rule, what)

    def sequence(self, node: Node, path: str, *, what: str = "") -> list[Node] | None:
        if not isinstance(node, SequenceNode) or node.tag != SEQ:
            self.problem(node, path, f"expected a list, got {describe(node)}")
            return None
        items: list[Node] = node.value
        if what and not items:
            self.problem(node, path, f"must list at least one {what}")
        return items

    # --- scalars ----------------------------------------------------------------------------
    def text(self, node: Node, path: str, rule: Rule | None = None, what: str = "") -> str | None:
        if not is_tag(node, STR):
            hint = " (quote it)" if isinstance(node, ScalarNode) and not is_tag(node, NULL) else ""
            self.problem(node, path, f"expected a string, got {describe(node)}{hint}")
            return None
        value: str = node.value
        if rule and not rule.pattern.fullmatch(value):
            self.problem(node, path, f"{what or 'value'} {value!r} is not valid ({rule.explain})")
        return value

    def flag(self, node: Node, path: str) -> bool | None:
        # YAML 1.1 also reads yes/no/on/off as booleans and YAML 1.2 does not: only true/false.
        if is_tag(node, BOOL) and node.value.lower() in ("true", "false"):
            return bool(node.value.lower() == "true")
        if is_tag(node, BOOL):
            self.problem(node, path, f"write true or false, not {node.value!r}")
        else:
            self.problem(node, path, f"expected true or false, got {describe(node)}")
        return None

    def integer(self, node: Node, path: str, minimum: int) -> int | None:
        if not is_tag(node, INT):
            self.problem(node, path, f"expected an integer, got {describe(node)}")
            return None
        assert isinstance(node, ScalarNode)
        try:
            value = int(_INTS.construct_yaml_int(node))
        except ValueError:
            self.problem(node, path, f"not a usable integer: {node.value[:30]!r}")
            return None
        if value < minimum:
            self.problem(node, path, f"must be at least {minimum}, got {value}")
            return None
        return value

    def duration(self, node: Node, path: str) -> timedelta | None:
        if not is_tag(node, STR):
            self.problem(
                node, path, f"expected a duration like 30m, 4h or PT1H, got {describe(node)}"
            )
            return None
        try:
            return parse_duration(node.value)
        except (ValueError, OverflowError) as exc:
            self.problem(node, path, f"bad duration {node.value!r}: {exc}")
            return None

    def day(self, node: Node, path: str) -> date | None:
        if isinstance(node, ScalarNode) and node.tag in (STR, TIMESTAMP):
            with suppress(ValueError):
                return date.fromisoformat(node.value)
        self.problem(node, path, f"expected a date like 2027-06-30, got {describe(node)}")
        return None

    def plain(self, node: Node, path: str, *, in_list: bool = False) -> Any:
        """A grants/options value: string, integer, boolean, null, or a list of those."""
        if isinstance(node, SequenceNode) and node.tag == SEQ and not in_list:
            return tuple(
                self.plain(item, f"{path}[{i}]", in_list=True) for i, item in enumerate(node.value)
            )
        if is_tag(node, STR):
            if _URL_WITH_PASSWORD.search(node.value):
                self.problem(node, path, INLINE_SECRET)
            return node.value
        if is_tag(node, INT):
            return self.integer(node, path, minimum=-(2**63))
        if is_tag(node, BOOL):
            return self.flag(node, path)
        if is_tag(node, NULL):
            return None
        hint = " (quote it)" if isinstance(node, ScalarNode) else ""
        self.problem(
            node, path, f"expected a string, integer, bool or null, got {describe(node)}{hint}"
        )
        return None

    def plain_mapping(self, node: Node, path: str) -> tuple[tuple[str, Any], ...] | None:
        fields = self.mapping(node, path, None, nullable=True)
        if fields is None:
            return None
        out: dict[str, Any] = {}
        for key, (key_node, value_node) in fields.items():
            if key in _VALUE_SECRET_KEYS:
                self.problem(key_node, join(path, key), INLINE_SECRET)
            out[key] = self.plain(value_node, join(path, key))
        return tuple(sorted(out.items()))

    def names(
        self, node: Node, path: str, rule: Rule, what: str, *, nonempty: bool = True
    ) -> list[tuple[str, Loc]]:
        out: list[tuple[str, Loc]] = []
        seen: set[str] = set()
        for i, item in enumerate(self.sequence(node, path, what=what if nonempty else "") or []):
            where = f"{path}[{i}]"
            name = self.text(item, where, rule, what)
            if name is None:
                continue
            if name in seen:
                self.problem(item, where, f"{what} '{name}' is listed twice")
            seen.add(name)
            out.append((name, self.loc(item, where)))
        return out

    def refs(self, node: Node, path: str, *, required: bool = False) -> tuple[PrincipalRef, ...]:
        out: list[PrincipalRef] = []
        items = self.sequence(node, path, what="principal" if required else "")
        for i, item in enumerate(items or []):
            where = f"{path}[{i}]"
            text = self.text(item, where)
            if text is None:
                continue
            try:
                ref = PrincipalRef.parse(text)
            except ValueError as exc:
                self.problem(item, where, str(exc))
                continue
            rule = USER_NAME if ref.kind == "user" else GROUP_NAME
            if not rule.pattern.fullmatch(ref.name):
                self.problem(
                    item, where, f"{ref.kind} name {ref.name!r} is not valid ({rule.explain})"
                )
            elif ref in out:
                self.problem(item, where, f"'{ref}' is listed twice")
            else:
                self.principal_refs.append((ref, self.loc(item, where)))
                out.append(ref)
        return tuple(out)

    def positive(self, node: Node, path: str) -> int | None:
        return self.integer(node, path, minimum=1)

    def required_refs(self, node: Node, path: str) -> tuple[PrincipalRef, ...]:
        return self.refs(node, path, required=True)
