"""Load policy YAML (one or more files) into a validated `Policy`.

Every problem is collected with its file, line and key path; nothing is built unless all pass.
The canonical document a policy is stored as lives in policy_document.py (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml
from yaml.nodes import Node

from jitaccess.adapters.policy_document import policy_digest, policy_to_document
from jitaccess.adapters.policy_nodes import Loc, join
from jitaccess.adapters.policy_schema import EligibilityDraft, FileDraft, FileWalk, RoleDraft
from jitaccess.domain.errors import PolicyInvalid, PolicyProblem
from jitaccess.domain.policy import (
    BreakGlassPolicy,
    OnCallSchedule,
    Policy,
    PrincipalRef,
    Target,
    User,
)

__all__ = ["load_policy_files", "load_policy_text", "policy_digest", "policy_to_document"]

FILE_SEPARATOR = "# --- file: "


def load_policy_text(text: str, filename: str = "<policy>", *, check_files: bool = True) -> Policy:
    """Parse and validate one YAML document; raise PolicyInvalid listing every problem.

    `check_files=False` skips reading the schedule files it names (a stored version is loaded
    as it was applied; a schedule file gone since only stops its rules from firing)."""
    return _build([_walk(text, filename)], [], check_files=check_files)


def load_policy_files(paths: Sequence[str | Path]) -> tuple[Policy, str]:
    """Merge several YAML files into one policy; return it with the combined source to store."""
    drafts: list[FileDraft] = []
    problems: list[PolicyProblem] = []
    chunks: list[str] = []
    if not paths:
        problems.append(PolicyProblem("<policy>", 1, "(file)", "no policy file given"))
    for path in paths:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(PolicyProblem(name, 1, "(file)", f"cannot read the file: {exc}"))
            continue
        body = text if text.endswith("\n") or not text else text + "\n"
        chunks.append(f"{FILE_SEPARATOR}{name}\n{body}")
        drafts.append(_walk(text, name))
    return _build(drafts, problems), "".join(chunks)


def _walk(text: str, filename: str) -> FileDraft:
    walk = FileWalk(filename)
    try:
        # compose, not load: nodes keep their line numbers and no object is ever constructed.
        root: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = "; ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        line = mark.line + 1 if mark else 1
        walk.draft.problems.append(
            PolicyProblem(filename, line, "(document)", f"YAML syntax error: {reason}")
        )
        return walk.draft
    except yaml.YAMLError as exc:
        position = getattr(exc, "position", 0)
        line = text.count("\n", 0, position) + 1
        walk.draft.problems.append(
            PolicyProblem(filename, line, "(document)", f"not YAML: {str(exc).splitlines()[0]}")
        )
        return walk.draft
    except RecursionError:
        walk.draft.problems.append(
            PolicyProblem(filename, 1, "(document)", "the document is nested too deeply")
        )
        return walk.draft
    broken = _first_unstorable_scalar(root)
    if broken is not None:
        node, char = broken
        walk.draft.problems.append(
            PolicyProblem(
                filename,
                node.start_mark.line + 1,
                "(document)",
                f"text holds U+{ord(char):04X}, a control character, line separator or lone "
                "surrogate; policy text may not contain these",
            )
        )
        return walk.draft
    walk.document(root)
    return walk.draft


def _unstorable(char: str) -> bool:
    """Characters a stored policy cannot carry back intact: controls (YAML reads U+0085,
    U+2028 and U+2029 as line breaks), lone surrogates (not UTF-8), non-characters."""
    code = ord(char)
    return (
        (code < 0x20 and char not in "\t\n\r")
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xDFFF
        or code in (0x2028, 0x2029, 0xFFFE, 0xFFFF)
    )


def _first_unstorable_scalar(root: Node | None) -> tuple[Node, str] | None:
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            bad = next((char for char in node.value if _unstorable(char)), None)
            if bad is not None:
                return node, bad
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in node.value for item in pair)
    return None


class _Merged:
    """All files together: the second definition of a name is the one reported."""

    def __init__(self, drafts: list[FileDraft], problems: list[PolicyProblem]) -> None:
        self.problems = problems
        self.users: dict[str, tuple[User, Loc]] = {}
        self.targets: dict[str, tuple[Target, Loc]] = {}
        self.roles: dict[str, RoleDraft] = {}
        self.eligibility: list[EligibilityDraft] = []
        self.admins: list[PrincipalRef] = []
        self.auditors: list[PrincipalRef] = []
        self.refs: list[tuple[PrincipalRef, Loc]] = []
        self.schedules: dict[str, tuple[OnCallSchedule, Loc]] = {}
        self.break_glass: tuple[BreakGlassPolicy, Loc] | None = None
        for draft in drafts:
            problems.extend(draft.problems)
            for name, (user, loc) in draft.users.items():
                if self._first("user", name, loc, self.users.get(name)):
                    self.users[name] = (user, loc)
            for name, (target, loc) in draft.targets.items():
                if self._first("target", name, loc, self.targets.get(name)):
                    self.targets[name] = (target, loc)
            for name, role in draft.roles.items():
                if self._first("role", name, role.loc, self.roles.get(name)):
                    self.roles[name] = role
            self.eligibility += draft.eligibility
            self.admins += draft.admins
            self.auditors += draft.auditors
            self.refs += draft.refs
            for name, (schedule, loc) in draft.schedules.items():
                if self._first("schedule", name, loc, self.schedules.get(name)):
                    self.schedules[name] = (schedule, loc)
            if draft.break_glass is not None:
                if self.break_glass is not None:
                    where = self.break_glass[1].where()
                    problems.append(draft.break_glass[1].problem(f"already set at {where}"))
                else:
                    self.break_glass = draft.break_glass
        self.members: dict[str, set[str]] = {}
        for user, _ in self.users.values():
            for group in user.groups:
                self.members.setdefault(group, set()).add(user.name)

    def _first(
        self, what: str, name: str, loc: Loc, earlier: tuple[object, Loc] | RoleDraft | None
    ) -> bool:
        if earlier is None:
            return True
        first = earlier.loc if isinstance(earlier, RoleDraft) else earlier[1]
        self.problems.append(loc.problem(f"{what} '{name}' is already defined at {first.where()}"))
        return False

    def check(self, files: dict[str, int]) -> None:
        for ref, loc in self.refs:
            if ref.kind == "user" and ref.name not in self.users:
                self.problems.append(loc.problem(f"unknown principal '{ref}'"))
            elif ref.kind == "group" and ref.name not in self.members:
                self.problems.append(loc.problem(f"unknown group '{ref.name}' (no user has it)"))
            elif ref.kind == "schedule" and ref.name not in self.schedules:
                self.problems.append(loc.problem(f"unknown schedule '{ref.name}'"))
        for draft in self.roles.values():
            self._check_role(draft)
        for row in self.eligibility:
            for name, loc in row.roles:
                if name not in self.roles:
                    self.problems.append(loc.problem(f"unknown role '{name}'"))
        self.problems.sort(key=lambda p: (files.get(p.file, -1), p.line))

    def _check_role(self, draft: RoleDraft) -> None:
        role = draft.role
        found = self.targets.get(role.target)
        if role.target and found is None:
            self.problems.append(
                draft.target_loc.problem(f"role on a missing target '{role.target}'")
            )
        walk = FileWalk(draft.loc.file)
        target_type = found[0].type if found else None
        grants = walk.grants(
            draft.grants_node, join(draft.loc.key, "grants"), draft.loc, target_type
        )
        self.problems += walk.draft.problems
        draft.role = replace(role, grants=grants)
        for stage, loc in draft.stages:
            people = self._people(stage.approvers + stage.escalate_to)
            if stage.approvers and stage.min_approvals > len(people):  # empty: reported
                self.problems.append(
                    loc.problem(
                        f"min_approvals {stage.min_approvals} can never be satisfied: only "
                        f"{len(people)} {'person' if len(people) == 1 else 'people'} "
                        f"can approve stage '{stage.name}'"
                    )
                )

    def _people(self, refs: tuple[PrincipalRef, ...]) -> set[str]:
        people: set[str] = set()
        for ref in refs:
            if ref.kind == "user" and ref.name in self.users:
                people.add(ref.name)
            elif ref.kind == "group":
                people |= self.members.get(ref.name, set())
        return people

    def policy(self) -> Policy:
        return Policy(
            users={name: self.users[name][0] for name in sorted(self.users)},
            targets={name: self.targets[name][0] for name in sorted(self.targets)},
            roles={name: self.roles[name].role for name in sorted(self.roles)},
            eligibility=tuple(row.row for row in self.eligibility),
            admins=tuple(self.admins),
            auditors=tuple(self.auditors),
            schedules={name: self.schedules[name][0] for name in sorted(self.schedules)},
            break_glass=self.break_glass[0] if self.break_glass else BreakGlassPolicy(),
        )

    def schedule_problems(self) -> None:
        """Schedule files that cannot be read now (checked on validate and apply)."""
        from jitaccess.adapters.oncall import check_schedule

        for schedule, loc in self.schedules.values():
            problem = check_schedule(schedule.file)
            if problem is not None:
                self.problems.append(loc.problem(problem))


def _build(
    drafts: list[FileDraft], problems: list[PolicyProblem], *, check_files: bool = True
) -> Policy:
    merged = _Merged(drafts, problems)
    if check_files:
        merged.schedule_problems()
    merged.check({draft.file: i for i, draft in enumerate(drafts)})
    if merged.problems:
        raise PolicyInvalid(merged.problems)
    return merged.policy()
