"""Schema walk for one policy YAML file: composed nodes in, drafts and every problem out.

Checks that need the whole policy (references, quorum) run in policy_yaml.py after files merge.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, TypeVar

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from jitaccess.domain.durations import parse_duration
from jitaccess.domain.errors import PolicyProblem
from jitaccess.domain.policy import (
    ApprovalPolicy,
    ConnectionRef,
    DurationPolicy,
    Eligibility,
    OnExtend,
    PrincipalKind,
    PrincipalRef,
    Requirements,
    Role,
    Stage,
    Target,
    User,
)

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
TARGET_NAME = Rule(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
    "letters, digits, '.', '_', '-'; at most 64, starting with a letter or digit",
)
ROLE_NAME = Rule(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}"),
    "letters, digits, '.', '_', '/', '-'; at most 128, starting with a letter or digit",
)
TARGET_TYPE = Rule(re.compile(r"[a-z][a-z0-9_-]*"), "lower-case connector name like postgres")
PG_IDENTIFIER = Rule(
    re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}"), "a PostgreSQL identifier like readonly"
)
ENV_VAR = Rule(re.compile(r"[A-Za-z_][A-Za-z0-9_]*"), "an environment variable name")
EMAIL = Rule(re.compile(r"[^@\s]+@[^@\s]+"), "an address like alice@example.com")

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

# The allowed keys of each mapping, in the order the error message lists them.
TOP_KEYS = ("version", "admins", "auditors", "users", "targets", "roles", "eligibility")
USER_KEYS = ("email", "groups", "kind")
TARGET_KEYS = ("type", "connection", "options")
ROLE_KEYS = ("target", "grants", "duration", "require", "approval", "description")
DURATION_KEYS = ("default", "max", "min")
REQUIRE_KEYS = ("justification", "justification_min_length", "ticket", "mfa")
APPROVAL_KEYS = ("stages", "pending_ttl", "on_extend")
STAGE_KEYS: tuple[str, ...] = ("name", "approvers", "min_approvals", "all_groups", "deny_threshold")
STAGE_KEYS += ("escalate_after", "escalate_to")
ELIGIBILITY_KEYS = ("principals", "roles", "from", "until")
DEFAULT_DURATION = DurationPolicy(default=timedelta(hours=1), max=timedelta(hours=8))

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


@dataclass
class RoleDraft:
    role: Role
    loc: Loc
    target_loc: Loc
    grants_node: Node | None
    stages: list[tuple[Stage, Loc]]


@dataclass
class EligibilityDraft:
    row: Eligibility
    roles: list[tuple[str, Loc]]


@dataclass
class FileDraft:
    """What one file says, checked on its own; placeholders stand in where a value was bad."""

    file: str
    users: dict[str, tuple[User, Loc]] = field(default_factory=dict)
    targets: dict[str, tuple[Target, Loc]] = field(default_factory=dict)
    roles: dict[str, RoleDraft] = field(default_factory=dict)
    eligibility: list[EligibilityDraft] = field(default_factory=list)
    admins: list[PrincipalRef] = field(default_factory=list)
    auditors: list[PrincipalRef] = field(default_factory=list)
    refs: list[tuple[PrincipalRef, Loc]] = field(default_factory=list)
    problems: list[PolicyProblem] = field(default_factory=list)


def describe(node: Node) -> str:
    # An explicit tag (!!set, !!python/...) is never silently dropped: it is named instead.
    if isinstance(node, MappingNode) and node.tag == MAP:
        return "a mapping"
    if isinstance(node, SequenceNode) and node.tag == SEQ:
        return "a list"
    return _TAG_WORDS.get(node.tag, f"a value tagged {node.tag}")


def _is(node: Node, tag: str) -> bool:
    return isinstance(node, ScalarNode) and node.tag == tag


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class FileWalk:
    """Walks one composed document; every check appends to `draft.problems` and carries on."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.draft = FileDraft(file)

    # --- plumbing ---------------------------------------------------------------------------
    def loc(self, node: Node, key: str) -> Loc:
        return Loc(self.file, node.start_mark.line + 1, key)

    def problem(self, node: Node, key: str, reason: str) -> None:
        self.draft.problems.append(self.loc(node, key).problem(reason))

    def mapping(
        self, node: Node, path: str, allowed: tuple[str, ...] | None, *, nullable: bool = False
    ) -> Fields | None:
        """Keys to (key node, value node); `allowed=None` for name-keyed sections."""
        if nullable and _is(node, NULL):
            return {}
        if not isinstance(node, MappingNode) or node.tag != MAP:
            self.problem(node, path, f"expected a mapping, got {describe(node)}")
            return None
        out: Fields = {}
        for key_node, value_node in node.value:
            if not _is(key_node, STR):
                hint = " (quote it)" if isinstance(key_node, ScalarNode) else ""
                reason = f"keys must be strings, got {describe(key_node)}{hint}"
                if _is(key_node, MERGE):
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
        if not _is(node, STR):
            hint = " (quote it)" if isinstance(node, ScalarNode) and not _is(node, NULL) else ""
            self.problem(node, path, f"expected a string, got {describe(node)}{hint}")
            return None
        value: str = node.value
        if rule and not rule.pattern.fullmatch(value):
            self.problem(node, path, f"{what or 'value'} {value!r} is not valid ({rule.explain})")
        return value

    def flag(self, node: Node, path: str) -> bool | None:
        # YAML 1.1 also reads yes/no/on/off as booleans and YAML 1.2 does not: only true/false.
        if _is(node, BOOL) and node.value.lower() in ("true", "false"):
            return bool(node.value.lower() == "true")
        if _is(node, BOOL):
            self.problem(node, path, f"write true or false, not {node.value!r}")
        else:
            self.problem(node, path, f"expected true or false, got {describe(node)}")
        return None

    def integer(self, node: Node, path: str, minimum: int) -> int | None:
        if not _is(node, INT):
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
        if not _is(node, STR):
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
            try:
                return date.fromisoformat(node.value)
            except ValueError:
                pass
        self.problem(node, path, f"expected a date like 2027-06-30, got {describe(node)}")
        return None

    def plain(self, node: Node, path: str, *, in_list: bool = False) -> Any:
        """A grants/options value: string, integer, boolean, null, or a list of those."""
        if isinstance(node, SequenceNode) and node.tag == SEQ and not in_list:
            return tuple(
                self.plain(item, f"{path}[{i}]", in_list=True) for i, item in enumerate(node.value)
            )
        if _is(node, STR):
            if _URL_WITH_PASSWORD.search(node.value):
                self.problem(node, path, INLINE_SECRET)
            return node.value
        if _is(node, INT):
            return self.integer(node, path, minimum=-(2**63))
        if _is(node, BOOL):
            return self.flag(node, path)
        if _is(node, NULL):
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
                self.draft.refs.append((ref, self.loc(item, where)))
                out.append(ref)
        return tuple(out)

    # --- sections ---------------------------------------------------------------------------
    def document(self, root: Node | None) -> None:
        if root is None or _is(root, NULL):
            self.draft.problems.append(
                Loc(self.file, 1, "(document)").problem(
                    "the policy is empty: expected a mapping of users, targets, roles, eligibility"
                )
            )
            return
        if not isinstance(root, MappingNode) or root.tag != MAP:
            self.problem(root, "(document)", f"expected a mapping at the top, got {describe(root)}")
            return
        top = self.mapping(root, "", TOP_KEYS) or {}
        if "version" in top:
            version = self.integer(top["version"][1], "version", minimum=1)
            if version is not None and version != 1:
                self.problem(top["version"][1], "version", f"unsupported version {version} (use 1)")
        for key, target in (("admins", self.draft.admins), ("auditors", self.draft.auditors)):
            if key in top and not _is(top[key][1], NULL):
                target.extend(self.refs(top[key][1], key))
        sections: dict[str, Callable[[str, Node, Node], None]] = {
            "users": self.user,
            "targets": self.target,
            "roles": self.role,
        }
        for key, walk_one in sections.items():
            if key in top:
                for name, (key_node, value_node) in (
                    self.mapping(top[key][1], key, None, nullable=True) or {}
                ).items():
                    walk_one(name, key_node, value_node)
        if "eligibility" in top and not _is(top["eligibility"][1], NULL):
            for i, row in enumerate(self.sequence(top["eligibility"][1], "eligibility") or []):
                self.eligibility(row, f"eligibility[{i}]")

    def user(self, name: str, key_node: Node, node: Node) -> None:
        path = join("users", name)
        self.text(key_node, path, USER_NAME, "user name")
        fields = self.mapping(node, path, USER_KEYS, nullable=True) or {}
        kind = self.get(fields, "kind", path, self.principal_kind) or PrincipalKind.USER
        email = self.get(fields, "email", path, self.checked(EMAIL, "email"))
        groups = self.get(
            fields,
            "groups",
            path,
            lambda n, p: self.names(n, p, GROUP_NAME, "group", nonempty=False),
        )
        user = User(name, kind, email, tuple(g for g, _ in groups or []))
        self.draft.users[name] = (user, self.loc(key_node, path))

    def principal_kind(self, node: Node, path: str) -> PrincipalKind | None:
        value = self.text(node, path)
        if value is not None and value not in ("user", "service"):
            self.problem(node, path, f"kind must be user or service, not {value!r}")
            return None
        return PrincipalKind(value) if value else None

    def target(self, name: str, key_node: Node, node: Node) -> None:
        path = join("targets", name)
        self.text(key_node, path, TARGET_NAME, "target name")
        fields = self.mapping(node, path, TARGET_KEYS) or {}
        # "fake" is a placeholder when the type is missing or bad: that is reported already.
        kind = (
            self.need(fields, "type", key_node, path, self.checked(TARGET_TYPE, "type")) or "fake"
        )
        connection = self.get(fields, "connection", path, self.connection)
        if kind != "fake" and "connection" not in fields and fields:
            self.problem(
                key_node,
                join(path, "connection"),
                f"a {kind!r} target needs connection: {{env: VAR}} or {{file: PATH}}",
            )
        options = self.get(fields, "options", path, self.plain_mapping) or ()
        target = Target(name, kind, connection, options)
        self.draft.targets[name] = (target, self.loc(key_node, path))

    def connection(self, node: Node, path: str) -> ConnectionRef | None:
        if isinstance(node, ScalarNode) and not _is(node, NULL):
            self.problem(node, path, INLINE_SECRET)
            return None
        fields = self.mapping(node, path, ("env", "file"))
        if fields is None:
            return None
        if len(fields) != 1 and (fields or not node.value):
            self.problem(node, path, "needs exactly one of env or file")
            return None
        env = self.get(fields, "env", path, self.checked(ENV_VAR, "env"))
        file = self.get(fields, "file", path, self.text)
        if file == "":
            self.problem(fields["file"][1], join(path, "file"), "must not be empty")
        return ConnectionRef(env=env, file=file) if env or file else None

    def role(self, name: str, key_node: Node, node: Node) -> None:
        path = join("roles", name)
        self.text(key_node, path, ROLE_NAME, "role name")
        fields = self.mapping(node, path, ROLE_KEYS) or {}
        target = self.need(fields, "target", key_node, path, self.text) or ""
        target_loc = self.loc(fields.get("target", (key_node, key_node))[1], join(path, "target"))
        duration = self.get(fields, "duration", path, self.durations) or DEFAULT_DURATION
        require = self.get(fields, "require", path, self.requirements) or Requirements()
        stages: list[tuple[Stage, Loc]] = []
        approval = self.get(fields, "approval", path, lambda n, p: self.approval(n, p, stages))
        description = self.get(fields, "description", path, self.text) or ""
        # grants are read once the target's type is known, which may be in another file.
        role = Role(name, target, (), duration, require, approval, description)
        grants_node = fields["grants"][1] if "grants" in fields else None
        draft = RoleDraft(role, self.loc(key_node, path), target_loc, grants_node, stages)
        self.draft.roles[name] = draft

    def grants(
        self, node: Node | None, path: str, owner: Loc, target_type: str | None
    ) -> tuple[tuple[str, Any], ...]:
        """What a role grants; postgres roles are checked key by key, other types pass through."""
        if target_type != "postgres":
            return (self.plain_mapping(node, path) or ()) if node is not None else ()
        if node is None:
            self.draft.problems.append(
                Loc(owner.file, owner.line, path).problem(
                    "a postgres role needs grants: {postgres_roles: [ROLE, ...]}"
                )
            )
            return ()
        fields = self.mapping(node, path, ("postgres_roles",))
        if fields is None or not self.required(fields, "postgres_roles", node, path):
            return ()
        where = join(path, "postgres_roles")
        roles = self.names(fields["postgres_roles"][1], where, PG_IDENTIFIER, "postgres role")
        return (("postgres_roles", tuple(name for name, _ in roles)),)

    def durations(self, node: Node, path: str) -> DurationPolicy | None:
        fields = self.mapping(node, path, DURATION_KEYS)
        if fields is None:
            return None
        values = {k: self.get(fields, k, path, self.duration) for k in DURATION_KEYS}
        for key in ("default", "max"):
            self.required(fields, key, node, path)
        low, default, high = values["min"] or timedelta(seconds=1), values["default"], values["max"]
        if default is None or high is None:
            return None
        if default > high:
            self.problem(fields["default"][1], join(path, "default"), "must not exceed max")
        if low > default:
            self.problem(fields["min"][1], join(path, "min"), "must not exceed default")
        return DurationPolicy(default=default, max=high, min=low)

    def requirements(self, node: Node, path: str) -> Requirements | None:
        fields = self.mapping(node, path, REQUIRE_KEYS, nullable=True)
        if fields is None:
            return None
        ticket = self.get(fields, "ticket", path, self.ticket)
        return Requirements(
            justification=self.get(fields, "justification", path, self.flag) or False,
            justification_min_length=self.get(
                fields, "justification_min_length", path, lambda n, p: self.integer(n, p, 0)
            )
            or 0,
            ticket=ticket,
            mfa=self.get(fields, "mfa", path, self.flag) or False,
        )

    def ticket(self, node: Node, path: str) -> str | None:
        pattern = self.text(node, path)
        if pattern is None:
            return None
        if not pattern:
            self.problem(node, path, "must not be empty (leave ticket out to not ask for one)")
            return None
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            self.problem(node, path, f"not a valid regular expression: {exc}")
            return None
        return pattern

    def approval(self, node: Node, path: str, stages: list[tuple[Stage, Loc]]) -> ApprovalPolicy:
        fields = self.mapping(node, path, APPROVAL_KEYS) or {}
        seen: set[str] = set()
        items = self.need(
            fields, "stages", node, path, lambda n, p: self.sequence(n, p, what="stage")
        )
        for i, item in enumerate(items or []):
            stage = self.stage(item, f"{path}.stages[{i}]", seen)
            if stage is not None:
                stages.append(stage)
        on_extend = self.get(fields, "on_extend", path, self.on_extend) or OnExtend.REQUIRED
        pending_ttl = self.get(fields, "pending_ttl", path, self.duration)
        return ApprovalPolicy(
            stages=tuple(s for s, _ in stages),
            pending_ttl=pending_ttl or timedelta(hours=24),
            on_extend=on_extend,
        )

    def on_extend(self, node: Node, path: str) -> OnExtend | None:
        value = self.text(node, path)
        if value is not None and value not in ("required", "not_required"):
            self.problem(node, path, f"must be required or not_required, not {value!r}")
            return None
        return OnExtend(value) if value else None

    def stage(self, node: Node, path: str, seen: set[str]) -> tuple[Stage, Loc] | None:
        fields = self.mapping(node, path, STAGE_KEYS)
        if fields is None:
            return None
        name = self.need(fields, "name", node, path, self.text)
        if name is not None and name in seen:
            self.problem(fields["name"][1], join(path, "name"), f"stage '{name}' is named twice")
        seen.add(name or "")
        approvers = self.need(fields, "approvers", node, path, self.required_refs) or ()
        escalate_after = self.get(fields, "escalate_after", path, self.duration)
        escalate_to = self.get(fields, "escalate_to", path, self.required_refs) or ()
        for have, need in (("escalate_after", "escalate_to"), ("escalate_to", "escalate_after")):
            if have in fields and need not in fields:
                self.problem(fields[have][0], join(path, need), f"{have} needs {need} too")
        count_at = fields["min_approvals"][1] if "min_approvals" in fields else node
        stage = Stage(
            name=name or "",
            approvers=approvers,
            min_approvals=self.get(fields, "min_approvals", path, self.positive) or 1,
            all_groups=self.get(fields, "all_groups", path, self.flag) or False,
            deny_threshold=self.get(fields, "deny_threshold", path, self.positive) or 1,
            escalate_after=escalate_after,
            escalate_to=escalate_to,
        )
        return stage, self.loc(count_at, join(path, "min_approvals"))

    def positive(self, node: Node, path: str) -> int | None:
        return self.integer(node, path, minimum=1)

    def required_refs(self, node: Node, path: str) -> tuple[PrincipalRef, ...]:
        return self.refs(node, path, required=True)

    def eligibility(self, node: Node, path: str) -> None:
        fields = self.mapping(node, path, ELIGIBILITY_KEYS)
        if fields is None:
            return
        principals = self.need(fields, "principals", node, path, self.required_refs) or ()
        roles = self.need(
            fields, "roles", node, path, lambda n, p: self.names(n, p, ROLE_NAME, "role")
        )
        roles = roles or []
        valid_from = self.get(fields, "from", path, self.day)
        valid_until = self.get(fields, "until", path, self.day)
        if valid_from and valid_until and valid_from > valid_until:
            self.problem(
                fields["until"][1],
                join(path, "until"),
                f"until {valid_until} is before from {valid_from}",
            )
        row = Eligibility(principals, tuple(r for r, _ in roles), valid_from, valid_until)
        self.draft.eligibility.append(EligibilityDraft(row, roles))
