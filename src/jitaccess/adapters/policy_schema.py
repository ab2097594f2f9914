"""Schema walk for one policy YAML file: composed nodes in, drafts and every problem out.

Checks that need the whole policy (references, quorum) run in policy_yaml.py after files merge.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from yaml.nodes import MappingNode, Node, ScalarNode

from jitaccess.adapters.policy_nodes import (
    GROUP_NAME,
    INLINE_SECRET,
    MAP,
    NULL,
    USER_NAME,
    Loc,
    NodeReader,
    Rule,
    describe,
    is_tag,
    join,
)
from jitaccess.domain.errors import PolicyProblem
from jitaccess.domain.policy import (
    DAY_NAMES,
    AllowedHours,
    ApprovalPolicy,
    AutoApproveRule,
    BreakGlassPolicy,
    ConnectionRef,
    DriftAction,
    DurationPolicy,
    Eligibility,
    OnCallSchedule,
    OnExtend,
    PrincipalKind,
    PrincipalRef,
    Requirements,
    Role,
    Stage,
    Target,
    User,
)

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

# The allowed keys of each mapping, in the order the error message lists them.
TOP_KEYS: tuple[str, ...] = ("version", "admins", "auditors", "users", "targets", "roles")
TOP_KEYS += ("eligibility", "schedules", "break_glass")
USER_KEYS = ("email", "groups", "kind", "break_glass")
TARGET_KEYS = ("type", "connection", "options", "drift")
ROLE_KEYS: tuple[str, ...] = ("target", "grants", "duration", "require", "approval")
ROLE_KEYS += ("description", "max_active", "break_glass")
DURATION_KEYS = ("default", "max", "min")
REQUIRE_KEYS = ("justification", "justification_min_length", "ticket", "mfa", "allowed_hours")
HOURS_KEYS = ("days", "from", "to", "tz")
APPROVAL_KEYS = ("stages", "pending_ttl", "on_extend", "distinct_stage_approvers", "auto_approve")
STAGE_KEYS: tuple[str, ...] = ("name", "approvers", "min_approvals", "all_groups", "deny_threshold")
STAGE_KEYS += ("escalate_after", "escalate_to", "mfa")
AUTO_KEYS = ("name", "on_call", "groups", "max_duration", "ticket")
SCHEDULE_KEYS = ("file",)
BREAK_GLASS_KEYS = ("max_duration", "justification_min_length")
SCHEDULE_NAME = Rule(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
    "letters, digits, '.', '_', '-'; at most 64, starting with a letter or digit",
)
CLOCK_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
ELIGIBILITY_KEYS = ("principals", "roles", "from", "until")
DEFAULT_DURATION = DurationPolicy(default=timedelta(hours=1), max=timedelta(hours=8))


@functools.cache
def _connector_classes() -> dict[str, Any]:
    from jitaccess.adapters.connectors.registry import connector_types

    return dict(connector_types())


def _needs_connection(target_type: str) -> bool:
    """Every target needs admin credentials by reference, unless its connector says it does
    not (`needs_connection = False`: fake, command)."""
    if target_type == "fake":
        return False
    return bool(getattr(_connector_classes().get(target_type), "needs_connection", True))


def _grant_problems(target_type: str | None, grants: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems the target type's connector finds in a role's `grants` (key, reason)."""
    check = getattr(_connector_classes().get(target_type or ""), "grant_problems", None)
    if not callable(check):
        return []
    return list(check(grants))


@dataclass
class RoleDraft:
    role: Role
    loc: Loc
    target_loc: Loc
    grants_node: Node | None
    stages: list[tuple[Stage, Loc]]
    rules: list[tuple[AutoApproveRule, Loc]] = field(default_factory=list)


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
    schedules: dict[str, tuple[OnCallSchedule, Loc]] = field(default_factory=dict)
    break_glass: tuple[BreakGlassPolicy, Loc] | None = None
    problems: list[PolicyProblem] = field(default_factory=list)


class FileWalk(NodeReader):
    """Walks one composed document; every check appends to `draft.problems` and carries on."""

    def __init__(self, file: str) -> None:
        self.draft = FileDraft(file)
        super().__init__(file, self.draft.problems, self.draft.refs)

    # --- sections ---------------------------------------------------------------------------
    def document(self, root: Node | None) -> None:
        if root is None or is_tag(root, NULL):
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
            if key in top and not is_tag(top[key][1], NULL):
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
        if "eligibility" in top and not is_tag(top["eligibility"][1], NULL):
            for i, row in enumerate(self.sequence(top["eligibility"][1], "eligibility") or []):
                self.eligibility(row, f"eligibility[{i}]")
        if "schedules" in top:
            for name, (key_node, value_node) in (
                self.mapping(top["schedules"][1], "schedules", None, nullable=True) or {}
            ).items():
                self.schedule(name, key_node, value_node)
        if "break_glass" in top:
            settings = self.break_glass_settings(top["break_glass"][1], "break_glass")
            if settings is not None:
                self.draft.break_glass = (settings, self.loc(top["break_glass"][0], "break_glass"))

    def schedule(self, name: str, key_node: Node, node: Node) -> None:
        path = join("schedules", name)
        self.text(key_node, path, SCHEDULE_NAME, "schedule name")
        fields = self.mapping(node, path, SCHEDULE_KEYS) or {}
        file = self.need(fields, "file", key_node, path, self.text)
        if file == "":
            self.problem(fields["file"][1], join(path, "file"), "must not be empty")
        if not file:
            return
        where = Path(file)
        if not where.is_absolute() and not self.file.startswith("<"):
            # Relative to the policy file that names it, wherever the command runs.
            where = Path(self.file).resolve().parent / where
        loc = self.loc(fields["file"][1], join(path, "file"))
        self.draft.schedules[name] = (OnCallSchedule(name, str(where)), loc)

    def break_glass_settings(self, node: Node, path: str) -> BreakGlassPolicy | None:
        fields = self.mapping(node, path, BREAK_GLASS_KEYS)
        if fields is None:
            return None
        default = BreakGlassPolicy()
        return BreakGlassPolicy(
            max_duration=self.get(fields, "max_duration", path, self.duration)
            or default.max_duration,
            justification_min_length=self.get(
                fields, "justification_min_length", path, self.positive
            )
            or default.justification_min_length,
        )

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
        break_glass = self.get(fields, "break_glass", path, self.flag) or False
        user = User(name, kind, email, tuple(g for g, _ in groups or []), break_glass)
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
        if _needs_connection(kind) and "connection" not in fields and fields:
            self.problem(
                key_node,
                join(path, "connection"),
                f"a {kind!r} target needs connection: {{env: VAR}} or {{file: PATH}}",
            )
        options = self.get(fields, "options", path, self.plain_mapping) or ()
        drift = self.get(fields, "drift", path, self.drift_action) or DriftAction.REPORT
        target = Target(name, kind, connection, options, drift)
        self.draft.targets[name] = (target, self.loc(key_node, path))

    def drift_action(self, node: Node, path: str) -> DriftAction | None:
        value = self.text(node, path)
        if value is not None and value not in ("report", "remove"):
            self.problem(node, path, f"must be report or remove, not {value!r}")
            return None
        return DriftAction(value) if value else None

    def connection(self, node: Node, path: str) -> ConnectionRef | None:
        if isinstance(node, ScalarNode) and not is_tag(node, NULL):
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
        rules: list[tuple[AutoApproveRule, Loc]] = []
        approval = self.get(
            fields, "approval", path, lambda n, p: self.approval(n, p, stages, rules)
        )
        description = self.get(fields, "description", path, self.text) or ""
        max_active = self.get(fields, "max_active", path, self.positive)
        break_glass = self.get(fields, "break_glass", path, self.flag) or False
        # grants are read once the target's type is known, which may be in another file.
        role = Role(
            name, target, (), duration, require, approval, description, max_active, break_glass
        )
        grants_node = fields["grants"][1] if "grants" in fields else None
        draft = RoleDraft(role, self.loc(key_node, path), target_loc, grants_node, stages, rules)
        self.draft.roles[name] = draft

    def grants(
        self, node: Node | None, path: str, owner: Loc, target_type: str | None
    ) -> tuple[tuple[str, Any], ...]:
        """What a role grants; postgres roles are checked key by key here, other types by their
        connector class's `grant_problems` (built-in and third-party alike)."""
        if target_type != "postgres":
            pairs = (self.plain_mapping(node, path) or ()) if node is not None else ()
            for key, reason in _grant_problems(target_type, dict(pairs)):
                where = join(path, key) if key else path
                if node is not None:
                    self.problem(node, where, reason)
                else:
                    self.draft.problems.append(Loc(owner.file, owner.line, where).problem(reason))
            return pairs
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
            allowed_hours=self.get(fields, "allowed_hours", path, self.allowed_hours),
        )

    def allowed_hours(self, node: Node, path: str) -> AllowedHours | None:
        fields = self.mapping(node, path, HOURS_KEYS)
        if fields is None:
            return None
        for key in HOURS_KEYS:
            self.required(fields, key, node, path)
        days = self.get(fields, "days", path, self.days)
        start = self.get(fields, "from", path, self.clock_time)
        end = self.get(fields, "to", path, self.clock_time)
        tz = self.get(fields, "tz", path, self.time_zone)
        if start is not None and end is not None and start == end:
            self.problem(fields["to"][1], join(path, "to"), "must differ from `from`")
            return None
        if days is None or start is None or end is None or tz is None:
            return None
        return AllowedHours(days, start, end, tz)

    def days(self, node: Node, path: str) -> frozenset[int] | None:
        """`mon-fri`, `sat,sun`, `mon-wed,fri`, or a list of those."""
        if isinstance(node, ScalarNode):
            parts = [p.strip() for p in (self.text(node, path) or "").split(",")]
        else:
            parts = [self.text(item, path) or "" for item in self.sequence(node, path) or []]
        found: set[int] = set()
        for part in parts:
            low, _, high = part.lower().partition("-")
            if low not in DAY_NAMES or (high and high not in DAY_NAMES):
                self.problem(node, path, f"{part!r} is not a day or range like mon-fri")
                return None
            first, last = DAY_NAMES.index(low), DAY_NAMES.index(high or low)
            found.update(d % 7 for d in range(first, last + 1 if last >= first else last + 8))
        return frozenset(found) if found else None

    def clock_time(self, node: Node, path: str) -> time | None:
        value = self.text(node, path)
        # YAML 1.1 reads some unquoted times (18:00, 8:00) as sexagesimal integers: ask for
        # quotes, so every time is written the same way.
        if value is None or not isinstance(node, ScalarNode):
            return None
        matched = CLOCK_TIME.fullmatch(value)
        if matched is None:
            self.problem(node, path, f'expected a time like "08:00" (quoted), not {value!r}')
            return None
        return time(int(matched.group(1)), int(matched.group(2)))

    def time_zone(self, node: Node, path: str) -> str | None:
        value = self.text(node, path)
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.problem(node, path, f"unknown time zone {value!r} (use an IANA name)")
            return None
        return value

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

    def approval(
        self,
        node: Node,
        path: str,
        stages: list[tuple[Stage, Loc]],
        rules: list[tuple[AutoApproveRule, Loc]],
    ) -> ApprovalPolicy:
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
        distinct = self.get(fields, "distinct_stage_approvers", path, self.flag)
        if "auto_approve" in fields:
            where = join(path, "auto_approve")
            names: set[str] = set()
            for i, item in enumerate(self.sequence(fields["auto_approve"][1], where) or []):
                rule = self.auto_rule(item, f"{where}[{i}]", names)
                if rule is not None:
                    rules.append((rule, self.loc(item, f"{where}[{i}]")))
        return ApprovalPolicy(
            stages=tuple(s for s, _ in stages),
            pending_ttl=pending_ttl or timedelta(hours=24),
            on_extend=on_extend,
            distinct_stage_approvers=True if distinct is None else distinct,
            auto_approve=tuple(r for r, _ in rules),
        )

    def auto_rule(self, node: Node, path: str, names: set[str]) -> AutoApproveRule | None:
        fields = self.mapping(node, path, AUTO_KEYS)
        if fields is None:
            return None
        conditions = [k for k in AUTO_KEYS if k != "name" and k in fields]
        if not conditions:
            self.problem(
                node, path, "a rule needs at least one of on_call, groups, max_duration, ticket"
            )
            return None
        name = self.get(fields, "name", path, self.text) or "+".join(conditions)
        if name in names:
            self.problem(node, join(path, "name"), f"rule '{name}' is named twice")
        names.add(name)
        groups = self.get(
            fields, "groups", path, lambda n, p: self.names(n, p, GROUP_NAME, "group")
        )
        for group, loc in groups or []:
            self.draft.refs.append((PrincipalRef("group", group), loc))
        on_call = self.get(fields, "on_call", path, self.checked(SCHEDULE_NAME, "schedule"))
        if on_call is not None:
            self.draft.refs.append(
                (
                    PrincipalRef("schedule", on_call),
                    self.loc(fields["on_call"][1], join(path, "on_call")),
                )
            )
        return AutoApproveRule(
            name=name,
            on_call=on_call,
            groups=tuple(g for g, _ in groups or []),
            max_duration=self.get(fields, "max_duration", path, self.duration),
            ticket=self.get(fields, "ticket", path, self.ticket),
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
            mfa=self.get(fields, "mfa", path, self.flag) or False,
        )
        return stage, self.loc(count_at, join(path, "min_approvals"))

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
