"""Build a `Policy` straight from a stored version's document: plain JSON data, no YAML.

A stored document was validated by the YAML loader when it was applied and never changes, so
this checks only what building needs (shapes, types, values that must parse); names, references
and quorum were checked at apply. Whatever it builds equals what `load_policy_text` builds from
the same document. A document it cannot build (a corrupt row) raises `PolicyInvalid` naming the
source and the key path. Eligibility rows may arrive one by one (streamed from the database):
they are built as they come, and every distinct principal, role list and date is made once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

from jitaccess.adapters.policy_document_sections import (
    Unbuildable,
    all_strings,
    as_integer,
    as_list,
    as_mapping,
    as_refs,
    as_text,
    describe,
    join,
    named_entries,
    read_break_glass,
    read_role,
    read_target,
    read_user,
    required_value,
)
from jitaccess.adapters.policy_schema import ELIGIBILITY_KEYS, SCHEDULE_KEYS, TOP_KEYS
from jitaccess.domain.errors import PolicyInvalid, PolicyProblem
from jitaccess.domain.policy import (
    BreakGlassPolicy,
    Eligibility,
    OnCallSchedule,
    Policy,
    PrincipalRef,
)

__all__ = ["DocumentReader", "policy_from_document"]

_ROW_KEYS = frozenset(ELIGIBILITY_KEYS)


def policy_from_document(document: Any, source: str = "<document>") -> Policy:
    """The Policy a document (as `policy_to_document` writes it) describes; `source` names it
    in errors and places relative schedule files as `load_policy_text(text, source)` does."""
    reader = DocumentReader(source)
    rows: Any = None
    if isinstance(document, Mapping):
        rows = document.get("eligibility")
        document = {key: value for key, value in document.items() if key != "eligibility"}
    reader.read_frame(document)
    if rows is not None and not isinstance(rows, list):
        reader.fail("eligibility", f"expected a list, got {describe(rows)}")
    return reader.policy(rows or ())


class DocumentReader:
    """One document's build, in two steps: `read_frame` with the document minus its
    eligibility list (which it does not keep: the caller may let the decoded data go), then
    `policy` with the eligibility rows (any iterable, consumed once, a row at a time)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._frame: Policy | None = None
        # Interned while building: the policy keeps one object per distinct value.
        self._refs: dict[str, PrincipalRef] = {}
        self._ref_lists: dict[tuple[str, ...], tuple[PrincipalRef, ...]] = {}
        self._name_lists: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._days: dict[str, date] = {}

    def fail(self, path: str, reason: str) -> NoReturn:
        problem = PolicyProblem(self.source, 1, path, f"the stored document is unusable: {reason}")
        raise PolicyInvalid([problem])

    def read_frame(self, frame: Any) -> None:
        try:
            self._frame = self._read_frame(frame)
        except Unbuildable as bad:
            self.fail(bad.path, bad.reason)

    def policy(self, rows: Iterable[Any]) -> Policy:
        assert self._frame is not None, "read_frame first"
        try:
            eligibility = tuple(self.eligibility_row(row, i) for i, row in enumerate(rows))
        except Unbuildable as bad:
            self.fail(bad.path, bad.reason)
        return replace(self._frame, eligibility=eligibility)

    def _read_frame(self, frame: Any) -> Policy:
        """Everything but the eligibility rows, as a Policy without them."""
        top = as_mapping(frame, "(document)", TOP_KEYS)
        version = top.get("version")
        if "version" in top and as_integer(version, "version", 1) != 1:
            raise Unbuildable("version", f"unsupported version {version!r}")
        admins, auditors = (
            as_refs(top.get(key), key, self._ref, required=False) for key in ("admins", "auditors")
        )
        users = {
            name: read_user(name, value, join("users", name), self._names)
            for name, value in named_entries(top.get("users"), "users")
        }
        targets = {
            name: read_target(name, value, join("targets", name))
            for name, value in named_entries(top.get("targets"), "targets")
        }
        roles = {
            name: read_role(name, value, join("roles", name), self._ref)
            for name, value in named_entries(top.get("roles"), "roles")
        }
        schedules = {
            name: self._schedule(name, value, join("schedules", name))
            for name, value in named_entries(top.get("schedules"), "schedules")
        }
        return Policy(
            users=dict(sorted(users.items())),
            targets=dict(sorted(targets.items())),
            roles=dict(sorted(roles.items())),
            admins=admins,
            auditors=auditors,
            schedules=dict(sorted(schedules.items())),
            break_glass=(
                read_break_glass(top["break_glass"]) if "break_glass" in top else BreakGlassPolicy()
            ),
        )

    # --- eligibility: the hot loop (a million rows) -------------------------------------------
    def eligibility_row(self, row: Any, index: int) -> Eligibility:
        if type(row) is dict and len(row) == 2:
            # The common row: principals and roles only, lists seen before (looked up by value:
            # a list holding anything unhashable raises TypeError, then the full check runs).
            principals, names = row.get("principals"), row.get("roles")
            if type(principals) is list and type(names) is list and names:
                try:
                    return Eligibility(
                        self._ref_lists[tuple(principals)], self._name_lists[tuple(names)]
                    )
                except (KeyError, TypeError):
                    return self._checked_row(row, index)  # lists not seen before
        return self._checked_row(row, index)

    def _checked_row(self, row: Any, index: int) -> Eligibility:
        path = f"eligibility[{index}]"
        if not isinstance(row, dict) or not row.keys() <= _ROW_KEYS:
            as_mapping(row, path, ELIGIBILITY_KEYS)  # says what is wrong
        principals = row.get("principals")
        refs = self._ref_lists.get(tuple(principals)) if all_strings(principals) else None
        if refs is None:
            refs = as_refs(principals, join(path, "principals"), self._ref, required=True)
            self._ref_lists[tuple(principals)] = refs
        roles = self._names(row.get("roles"), join(path, "roles"), nonempty=True)
        start = self._day(row["from"], join(path, "from")) if "from" in row else None
        end = self._day(row["until"], join(path, "until")) if "until" in row else None
        if start and end and start > end:
            raise Unbuildable(join(path, "until"), f"until {end} is before from {start}")
        return Eligibility(refs, roles, start, end)

    def _ref(self, value: Any, path: str) -> PrincipalRef:
        ref = self._refs.get(value) if isinstance(value, str) else None
        if ref is None:
            text = as_text(value, path)
            try:
                ref = PrincipalRef.parse(text)
            except ValueError as exc:
                raise Unbuildable(path, str(exc)) from None
            self._refs[text] = ref
        return ref

    def _names(self, value: Any, path: str, *, nonempty: bool = False) -> tuple[str, ...]:
        """A list of names (a row's roles, a user's groups), one tuple per distinct list."""
        names = self._name_lists.get(tuple(value)) if all_strings(value) else None
        if names is None:
            items = as_list(value, path, nonempty=nonempty)
            names = tuple(as_text(item, f"{path}[{i}]") for i, item in enumerate(items))
            self._name_lists[names] = names
        return names

    def _day(self, value: Any, path: str) -> date:
        found = self._days.get(value) if isinstance(value, str) else None
        if found is None:
            if isinstance(value, str):
                with suppress(ValueError):
                    found = self._days[value] = date.fromisoformat(value)
            if found is None:
                raise Unbuildable(path, f"expected a date like 2027-06-30, got {value!r}")
        return found

    def _schedule(self, name: str, value: Any, path: str) -> OnCallSchedule:
        fields = as_mapping(value, path, SCHEDULE_KEYS)
        file = as_text(required_value(fields, "file", path), join(path, "file"))
        if not file:
            raise Unbuildable(join(path, "file"), "must not be empty")
        where = Path(file)
        if not where.is_absolute() and not self.source.startswith("<"):
            # As the YAML loader places it: next to the (here: notional) policy file.
            where = Path(self.source).resolve().parent / where
        return OnCallSchedule(name, str(where))
