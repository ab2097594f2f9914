"""Approval rules as data: every scenario in tests/scenarios/*.yaml runs here, on the Harness
(in-memory storage, fake clock, fake connectors) with its policy loaded by the real YAML loader.

Fixture format (one file per theme)::

    policy: |            # the default policy text of the file's scenarios, or:
      ...
    policies:            # named policy texts; a scenario picks one with `policy: NAME`
      NAME: |
        ...
    scenarios:
      - name: quorum of two distinct people       # unique in the file; test id FILE:NAME
        policy: NAME                              # optional: one of `policies`
        start: "2026-01-10T12:00:00+01:00"        # optional: the fake clock's start
        xfail: "why"                              # optional: a known contradiction of the rule
        request: {by: alice, roles: [app/x], duration: 30m, partial: false,
                  justification: "...", ticket: INC-1, break_glass: false, as: LABEL}
        expect: pending                           # checks beside `request` check it: step 0
        steps:
          - {approve: bob, expect: pending}
          - {approve: bob, refused: decided-twice}
          - {advance: 31m}
          - {work: {escalated: 1}}
          - {approve: dan, expect: approved, grants: [app/x]}

Each step has at most one action: `request` (another request; `as:` names it), `approve: WHO`,
`deny: WHO`, `cancel: WHO`, `advance: DURATION`, `set_clock: ISO-TIME`, `work: true` (or a
mapping of WorkReport counters it must report). `about: LABEL` picks the request a step acts on and
checks (default: the last one created). `refused: RULE` says the action must fail with an error
whose `rule` is RULE; then a refused audit record must name that rule and nothing may change
(except that a decision past the pending TTL expires its request: say `expect: expired`).

Checks, on the step's request after its action: `expect` (state), `grants` (the roles granted,
exactly), `duration`, `auto_approved` ({role: rule}, exactly), `reviews` (count of break-glass
reviews), `audit` / `audit_once` / `no_audit` (actions of ok records about the request: present /
exactly once / absent), `audit_data` ({action: {key: value}}: some such record has that data),
`notified` / `not_notified` ({person: [kinds]} about the request). Any other key fails loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from jitaccess.adapters.policy_yaml import load_policy_text
from jitaccess.clock import FakeClock
from jitaccess.domain.durations import parse_duration
from jitaccess.domain.errors import JitAccessError
from jitaccess.domain.model import Decision, Request, RequestState
from jitaccess.ports import AuditRecord
from jitaccess.services.run_due_work import WorkReport
from support.lifecycle import Harness

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

FILE_KEYS = frozenset({"policy", "policies", "scenarios"})
SCENARIO_KEYS = frozenset({"name", "policy", "start", "xfail", "steps"})
ACTIONS = ("request", "approve", "deny", "cancel", "advance", "set_clock", "work")
REFUSABLE = frozenset({"request", "approve", "deny", "cancel"})
MODIFIERS = frozenset({"about", "refused"})  # not `on`: YAML 1.1 reads it as true
CHECKS = frozenset(
    {
        "expect",
        "grants",
        "duration",
        "auto_approved",
        "reviews",
        "audit",
        "audit_once",
        "no_audit",
        "audit_data",
        "notified",
        "not_notified",
    }
)
STEP_KEYS = frozenset(ACTIONS) | MODIFIERS | CHECKS
REQUEST_KEYS = frozenset(
    {"by", "roles", "duration", "justification", "ticket", "partial", "break_glass", "as"}
)
WORK_COUNTERS = frozenset(
    f.name for f in fields(WorkReport) if f.name not in ("errors", "claimed", "batch")
)
STATES = frozenset(s.value for s in RequestState)


class FixtureError(Exception):
    """The fixture itself is wrong (unknown key, bad value): never an expected failure."""


# --- loading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    file: str
    name: str
    policy_text: str
    steps: tuple[Mapping[str, Any], ...]
    start: datetime | None = None
    xfail: str | None = None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.name}"


def _unknown(keys: Any, allowed: frozenset[str], where: str) -> None:
    if not isinstance(keys, Mapping):
        raise FixtureError(f"{where}: expected a mapping, got {keys!r}")
    extra = sorted(str(k) for k in set(keys) - allowed)
    if extra:
        raise FixtureError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _time(value: Any, where: str) -> datetime:
    found = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            found = datetime.fromisoformat(value)
        except ValueError as exc:
            raise FixtureError(f"{where}: not an ISO time: {value!r}") from exc
    if found is None or found.tzinfo is None:
        raise FixtureError(f"{where}: expected an ISO time with a zone, got {value!r}")
    return found


def parse_scenario(
    raw: Mapping[str, Any],
    *,
    file: str = "<inline>",
    policies: Mapping[str, str] | None = None,
    default_policy: str | None = None,
) -> Scenario:
    """One scenario of a fixture file, checked for unknown keys and turned into steps."""
    name = raw.get("name") if isinstance(raw, Mapping) else None
    where = f"{file}:{name or '?'}"
    _unknown(raw, SCENARIO_KEYS | STEP_KEYS, where)
    if not isinstance(name, str) or not name:
        raise FixtureError(f"{where}: every scenario needs a name")
    first = {k: v for k, v in raw.items() if k in STEP_KEYS}
    if first and "request" not in first:
        raise FixtureError(f"{where}: {sorted(first)} beside the scenario need a `request`")
    extra = raw.get("steps", [])
    if not isinstance(extra, list):
        raise FixtureError(f"{where}: steps must be a list")
    steps = ([first] if first else []) + extra
    if not steps:
        raise FixtureError(f"{where}: nothing to do")
    for i, step in enumerate(steps):
        _unknown(step, STEP_KEYS, f"{where} step {i}")
    choice = raw.get("policy")
    if choice is None:
        text = default_policy
    elif isinstance(choice, str) and policies is not None and choice in policies:
        text = policies[choice]
    else:
        raise FixtureError(f"{where}: unknown policy {choice!r}; have {sorted(policies or {})}")
    if not isinstance(text, str):
        raise FixtureError(f"{where}: no policy (give the file a `policy` or `policies`)")
    xfail = raw.get("xfail")
    if xfail is not None and (not isinstance(xfail, str) or not xfail):
        raise FixtureError(f"{where}: xfail must be the reason, as text")
    start = _time(raw["start"], f"{where} start") if "start" in raw else None
    return Scenario(file, name, text, tuple(steps), start, xfail)


def load_file(path: Path) -> list[Scenario]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    _unknown(doc, FILE_KEYS, path.name)
    policies = doc.get("policies") or {}
    if not isinstance(policies, Mapping) or not all(isinstance(v, str) for v in policies.values()):
        raise FixtureError(f"{path.name}: policies must map names to policy texts")
    raw = doc.get("scenarios")
    if not isinstance(raw, list) or not raw:
        raise FixtureError(f"{path.name}: needs a non-empty list of scenarios")
    found = [
        parse_scenario(s, file=path.stem, policies=policies, default_policy=doc.get("policy"))
        for s in raw
    ]
    names = [s.name for s in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FixtureError(f"{path.name}: scenario names used twice: {twice}")
    return found


def load_all(directory: Path = SCENARIO_DIR) -> list[Scenario]:
    return [s for path in sorted(directory.glob("*.yaml")) for s in load_file(path)]


# --- running ---------------------------------------------------------------------------------
@dataclass
class Run:
    h: Harness
    labels: dict[str, str] = field(default_factory=dict)  # label -> request id
    last: str | None = None

    def request_id(self, step: Mapping[str, Any], where: str) -> str:
        label = step.get("about")
        if label is not None:
            if label not in self.labels:
                raise FixtureError(f"{where}: no request labelled {label!r}")
            return self.labels[label]
        if self.last is None:
            raise FixtureError(f"{where}: no request yet")
        return self.last

    def request(self, request_id: str) -> Request:
        return self.h.store.requests[request_id]


def _durations(value: Any, where: str) -> timedelta:
    if not isinstance(value, str):
        raise FixtureError(f"{where}: expected a duration like 30m, got {value!r}")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise FixtureError(f"{where}: {exc}") from exc


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FixtureError(f"{where}: expected a list of names, got {value!r}")
    return list(value)


def _who(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FixtureError(f"{where}: expected a user name, got {value!r}")
    return value


def _do_request(run: Run, spec: Any, where: str) -> None:
    _unknown(spec, REQUEST_KEYS, f"{where} request")
    if "by" not in spec or "roles" not in spec:
        raise FixtureError(f"{where}: a request needs `by` and `roles`")
    label = spec.get("as", "main" if not run.labels else f"request{len(run.labels) + 1}")
    if label in run.labels:
        raise FixtureError(f"{where}: label {label!r} used twice")
    kwargs: dict[str, Any] = {}
    if "justification" in spec:
        kwargs["justification"] = str(spec["justification"])
    if "ticket" in spec:
        kwargs["ticket"] = None if spec["ticket"] is None else str(spec["ticket"])
    made = run.h.request(
        _who(spec["by"], where),
        *_names(spec["roles"], f"{where} roles"),
        duration=_durations(spec["duration"], where) if "duration" in spec else None,
        partial=bool(spec.get("partial", False)),
        break_glass=bool(spec.get("break_glass", False)),
        **kwargs,
    )
    run.labels[label] = made.id
    run.last = made.id


def _do_work(run: Run, spec: Any, where: str) -> None:
    report = run.h.work()
    if spec is True:
        return
    _unknown(spec, WORK_COUNTERS, f"{where} work")
    for counter, wanted in spec.items():
        got = getattr(report, counter)
        assert got == wanted, f"{where}: the worker reported {counter}={got}, expected {wanted}"


def _act(run: Run, action: str, step: Mapping[str, Any], where: str) -> None:
    value = step[action]
    h = run.h
    if action == "request":
        _do_request(run, value, where)
    elif action in ("approve", "deny"):
        decision = Decision.APPROVE if action == "approve" else Decision.DENY
        h.decide(_who(value, where), run.request_id(step, where), decision)
    elif action == "cancel":
        h.cancel(_who(value, where), run.request_id(step, where))
    elif action == "advance":
        h.clock.advance(_durations(value, where))
    elif action == "set_clock":
        h.clock.set(_time(value, where))
    elif action == "work":
        _do_work(run, value, where)


def _snapshot(h: Harness) -> dict[str, Any]:
    """What a refused action must leave alone."""
    return {
        "requests": {
            rid: (r.state.value, len(r.approvals), tuple(r.grant_ids))
            for rid, r in h.store.requests.items()
        },
        "grants": {gid: g.state.value for gid, g in h.store.grants.items()},
        "reviews": sorted(h.store.reviews),
    }


def _refusals(h: Harness) -> list[AuditRecord]:
    return [r for r in h.store.audit if r.entry.outcome == "refused"]


REFUSED_ACTION = {
    "request": "request.create",
    "approve": "request.approve",
    "deny": "request.deny",
    "cancel": "request.cancel",
}


def _check_refused(
    run: Run,
    action: str,
    step: Mapping[str, Any],
    error: JitAccessError,
    before: dict[str, Any],
    refusals_before: int,
    where: str,
) -> None:
    rule = step["refused"]
    assert error.rule == rule, (
        f"{where}: refused with rule {error.rule!r} ({error.code}: {error.message}), "
        f"expected {rule!r}"
    )
    refusals = _refusals(run.h)
    assert len(refusals) == refusals_before + 1, f"{where}: no refused audit record was written"
    record = refusals[-1].entry
    actor = step[action]["by"] if action == "request" else step[action]
    assert (record.action, record.actor, record.data.get("rule")) == (
        REFUSED_ACTION[action],
        actor,
        rule,
    ), f"{where}: the refused audit record is {record}"
    if action != "request":
        assert record.subject == run.request_id(step, where), f"{where}: refusal about {record}"
    after = _snapshot(run.h)
    if action != "request" and step.get("expect") == RequestState.EXPIRED.value:
        # The one change a refused decision may make: expire a request past its pending TTL.
        rid = run.request_id(step, where)
        state, approvals, grant_ids = before["requests"][rid]
        if state == RequestState.PENDING.value:
            before["requests"][rid] = (RequestState.EXPIRED.value, approvals, grant_ids)
    assert after == before, f"{where}: a refused {action} changed the state"


def _records(run: Run, rid: str) -> list[AuditRecord]:
    return [r for r in run.h.store.audit if r.entry.subject == rid and r.entry.outcome == "ok"]


def _check(run: Run, step: Mapping[str, Any], where: str) -> None:
    wanted = {k: v for k, v in step.items() if k in CHECKS}
    if not wanted:
        return
    rid = run.request_id(step, where)
    request = run.request(rid)
    h = run.h
    if "expect" in wanted:
        if wanted["expect"] not in STATES:
            raise FixtureError(f"{where}: expect must be one of {sorted(STATES)}")
        assert request.state.value == wanted["expect"], (
            f"{where}: request is {request.state.value}, expected {wanted['expect']}"
        )
    if "grants" in wanted:
        roles = sorted(g.role for g in h.store.grants.values() if g.request_id == rid)
        expected = sorted(_names(wanted["grants"], f"{where} grants"))
        assert roles == expected, f"{where}: grants for {roles}, expected {expected}"
    if "duration" in wanted:
        duration = _durations(wanted["duration"], where)
        assert request.duration == duration, f"{where}: duration is {request.duration}"
    if "auto_approved" in wanted:
        assert request.auto_approved == (wanted["auto_approved"] or {}), (
            f"{where}: auto-approved {request.auto_approved}"
        )
    if "reviews" in wanted:
        reviews = [r for r in h.store.reviews.values() if r.request_id == rid]
        assert len(reviews) == wanted["reviews"], f"{where}: {len(reviews)} review(s)"
        assert all(r.kind == "break-glass" and r.principal == request.requester for r in reviews), (
            f"{where}: reviews {reviews}"
        )
    _check_audit(run, rid, wanted, where)
    _check_notifications(run, rid, wanted, where)


def _check_audit(run: Run, rid: str, wanted: Mapping[str, Any], where: str) -> None:
    actions = [r.entry.action for r in _records(run, rid)]
    for action in _names(wanted.get("audit", []), f"{where} audit"):
        assert action in actions, f"{where}: no {action} audit record; have {actions}"
    for action in _names(wanted.get("audit_once", []), f"{where} audit_once"):
        assert actions.count(action) == 1, f"{where}: {actions.count(action)}x {action}"
    for action in _names(wanted.get("no_audit", []), f"{where} no_audit"):
        assert action not in actions, f"{where}: unexpected {action} audit record"
    data = wanted.get("audit_data", {})
    if not isinstance(data, Mapping):
        raise FixtureError(f"{where}: audit_data maps actions to data")
    for action, expected in data.items():
        if not isinstance(expected, Mapping):
            raise FixtureError(f"{where}: audit_data of {action} must be a mapping")
        found = [dict(r.entry.data) for r in _records(run, rid) if r.entry.action == action]
        assert any(all(d.get(k) == v for k, v in expected.items()) for d in found), (
            f"{where}: no {action} record with data {expected}; have {found}"
        )


def _check_notifications(run: Run, rid: str, wanted: Mapping[str, Any], where: str) -> None:
    sent = [(n.recipient, n.kind) for n in run.h.store.notifications if n.subject == rid]
    for key, present in (("notified", True), ("not_notified", False)):
        people = wanted.get(key, {})
        if not isinstance(people, Mapping):
            raise FixtureError(f"{where}: {key} maps people to notification kinds")
        for person, kinds in people.items():
            for kind in _names(kinds, f"{where} {key}"):
                assert ((person, kind) in sent) is present, (
                    f"{where}: {person} {'was not' if present else 'was'} notified {kind!r}; "
                    f"sent: {sorted(set(sent))}"
                )


def _invariants(run: Run, where: str) -> None:
    """Rules every step must keep, whatever the scenario says."""
    for rid, request in run.h.store.requests.items():
        deciders = [a.approver for a in request.approvals]
        assert request.requester not in deciders, f"{where}: {rid} decided by its requester"
        counted = [(a.approver, mark) for a in request.approvals for mark in a.counted_for]
        assert len(counted) == len(set(counted)), f"{where}: someone decided a stage twice"
        grants = [g for g in run.h.store.grants.values() if g.request_id == rid]
        if grants:
            assert request.state is RequestState.APPROVED, f"{where}: grants for a {request.state}"
        for grant in grants:
            assert grant.role in request.roles, f"{where}: {grant.role} not asked for"
            assert grant.principal == request.requester, f"{where}: grant for someone else"
            assert grant.ends_at - grant.starts_at == request.duration, f"{where}: widened"


def run_step(run: Run, step: Mapping[str, Any], where: str) -> None:
    _unknown(step, STEP_KEYS, where)
    actions = [k for k in ACTIONS if k in step]
    if len(actions) > 1:
        raise FixtureError(f"{where}: one action per step, got {actions}")
    action = actions[0] if actions else None
    if "refused" in step and action not in REFUSABLE:
        raise FixtureError(f"{where}: only {sorted(REFUSABLE)} can be refused")
    if "about" in step and action in ("request", "advance", "set_clock", "work"):
        raise FixtureError(f"{where}: `about` picks the request of a decision, cancel or check")
    before = _snapshot(run.h)
    refusals_before = len(_refusals(run.h))
    if action is not None:
        try:
            _act(run, action, step, where)
        except JitAccessError as error:
            if "refused" not in step:
                raise AssertionError(
                    f"{where}: {action} refused unexpectedly: {error.code} "
                    f"(rule {error.rule!r}): {error.message}"
                ) from error
            _check_refused(run, action, step, error, before, refusals_before, where)
        else:
            assert "refused" not in step, f"{where}: expected refusal {step['refused']!r}"
    _check(run, step, where)
    _invariants(run, where)


def run_scenario(scenario: Scenario) -> Harness:
    """Run every step; raise AssertionError at the first expectation that does not hold."""
    clock = FakeClock(scenario.start) if scenario.start else FakeClock()
    run = Run(Harness(policy=load_policy_text(scenario.policy_text), clock=clock))
    for i, step in enumerate(scenario.steps):
        run_step(run, step, f"{scenario.id} step {i} {dict(step)}")
    return run.h


# --- the tests -------------------------------------------------------------------------------
SCENARIOS = load_all()


def _param(scenario: Scenario) -> Any:
    marks = (
        [pytest.mark.xfail(reason=scenario.xfail, strict=True, raises=AssertionError)]
        if scenario.xfail
        else []
    )
    return pytest.param(scenario, id=scenario.id, marks=marks)


@pytest.mark.parametrize("scenario", [_param(s) for s in SCENARIOS])
def test_scenario(scenario: Scenario) -> None:
    run_scenario(scenario)


def test_the_fixtures_cover_every_theme() -> None:
    files = {s.file for s in SCENARIOS}
    assert len(SCENARIOS) >= 40, f"only {len(SCENARIOS)} scenarios"
    assert len(files) >= 5, files


MINI_POLICY = """
users:
  alice: {groups: [engineers]}
  bob: {groups: [dba]}
  dan: {groups: [dba]}
targets:
  demo: {type: fake}
roles:
  app/deploy:
    target: demo
    duration: {default: 30m, max: 1h}
    approval:
      stages:
        - {name: dba, approvers: [group:dba], min_approvals: 2}
eligibility:
  - {principals: [group:engineers], roles: [app/deploy]}
"""


def _mini(*steps: Mapping[str, Any]) -> Scenario:
    raw = {
        "name": "meta",
        "policy": "mini",
        "request": {"by": "alice", "roles": ["app/deploy"]},
        "expect": "pending",
        "steps": list(steps),
    }
    return parse_scenario(raw, policies={"mini": MINI_POLICY})


def test_the_runner_passes_a_true_scenario() -> None:
    h = run_scenario(_mini({"approve": "bob", "expect": "pending"}, {"approve": "dan"}))
    (request,) = h.store.requests.values()
    assert request.state is RequestState.APPROVED


CATCHES: dict[str, tuple[Mapping[str, Any], ...]] = {
    "a wrong state": ({"approve": "bob", "expect": "approved"},),
    "a wrong grant list": ({"approve": "bob"}, {"approve": "dan", "grants": []}),
    "a refusal that does not happen": ({"approve": "bob", "refused": "not-an-approver"},),
    "a refusal for another rule": ({"deny": "alice", "refused": "not-an-approver"},),
    "an unexpected refusal": ({"approve": "alice"},),
    "a missing audit record": ({"approve": "bob", "audit": ["request.approved"]},),
    "a missing notification": ({"approve": "bob", "notified": {"dan": ["escalated"]}},),
    "a wrong worker report": ({"work": {"expired_requests": 1}},),
}


@pytest.mark.parametrize("steps", list(CATCHES.values()), ids=list(CATCHES))
def test_the_runner_fails_on_a_wrong_expectation(steps: tuple[Mapping[str, Any], ...]) -> None:
    with pytest.raises(AssertionError):
        run_scenario(_mini(*steps))


@pytest.mark.parametrize(
    "step",
    [
        {"aprove": "bob"},
        {"approve": "bob", "expected": "pending"},
        {"approve": "bob", "cancel": "x"},
    ],
    ids=["misspelt action", "misspelt check", "two actions"],
)
def test_the_runner_rejects_a_malformed_step(step: Mapping[str, Any]) -> None:
    with pytest.raises(FixtureError):
        run_scenario(_mini(step))


def test_a_misspelt_scenario_key_fails_loudly() -> None:
    with pytest.raises(FixtureError, match="unknown key"):
        parse_scenario({"name": "x", "reqest": {}}, policies={"mini": MINI_POLICY})
