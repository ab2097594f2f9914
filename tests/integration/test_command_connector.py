"""The command connector running a real program (a Python script in a temp dir) that records
what it was given; and the whole lifecycle through the worker on SQLite."""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jitaccess.adapters.connectors import events
from jitaccess.adapters.connectors.command import CommandConnector
from jitaccess.clock import FakeClock
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.model import GrantState, Request
from jitaccess.domain.policy import ConnectionRef, Target
from jitaccess.ports import Access, ExistingAccess
from jitaccess.services.fetch_credentials import fetch_credentials
from jitaccess.services.request_access import request_access
from jitaccess.services.run_due_work import WorkerOptions, run_due_work
from support.databases import container_on

# Records argv, stdin and environment, then behaves as the file named by argv[2] says.
PROGRAM = r"""
import json, os, subprocess, sys, time

log, control = sys.argv[1], sys.argv[2]
raw = sys.stdin.buffer.read()
mode = open(control).read().strip() if os.path.exists(control) else "ok"
with open(log, "a") as out:
    record = {"argv": sys.argv[3:], "stdin": raw.decode(), "env": dict(os.environ)}
    out.write(json.dumps(record) + "\n")
event = json.loads(raw)
if mode == "fail":
    print("connecting to the directory", file=sys.stderr)
    secret = os.environ.get("JITACCESS_SECRET", "")
    print(f"no such group: ops (admin key {secret})" + "!" * 400, file=sys.stderr)
    sys.exit(3)
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(log + ".pids", "w") as out:
        out.write(f"{os.getpid()} {child.pid}")
    time.sleep(60)
if mode == "chatty":
    print("provisioning...")
elif event["event"] == "provision":
    token = "t-" + event["grant_id"][-4:]
    print(json.dumps({"credentials": {"username": event["account"], "token": token}}))
elif event["event"] == "list":
    found = {"account": "carol", "principal": "carol", "grant_id": None,
             "detail": {"governed": event["governed"]}}
    print(json.dumps({"access": [found]}))
"""


class Program:
    """The script, its log and its control file."""

    def __init__(self, directory: Path) -> None:
        self.script = directory / "program.py"
        self.script.write_text(PROGRAM)
        self.log = directory / "calls.jsonl"
        self.control = directory / "mode"

    def argv(self, *extra: str) -> tuple[str, ...]:
        return (sys.executable, str(self.script), str(self.log), str(self.control), *extra)

    def behave(self, mode: str) -> None:
        self.control.write_text(mode)

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def program(tmp_path: Path) -> Program:
    return Program(tmp_path)


def command_target(program: Program, *extra: str, **options: Any) -> Target:
    opts = {"command": program.argv(*extra), **options}
    return Target("runner", "command", None, tuple(opts.items()))


@pytest.fixture
def runner(program: Program) -> CommandConnector:
    return CommandConnector(command_target(program, timeout=10))


def make_access() -> Access:
    now = datetime.now(UTC).replace(microsecond=0)
    return Access(
        grant_id=str(uuid.uuid4()),
        principal="alice",
        role="runner/ops",
        target="runner",
        grants={"group": "ops", "hosts": ("a", "b")},
        starts_at=now,
        ends_at=now + timedelta(hours=1),
    )


def test_each_event_arrives_on_stdin_exactly_with_a_minimal_environment(
    program: Program, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JIT_WORKER_ONLY", "must not leak")
    runner = CommandConnector(command_target(program, env=("GREETING=hello",)))
    access = make_access()

    credentials = runner.provision(access)
    runner.extend(access)
    runner.revoke(access)

    account = runner.account_of(access)
    assert credentials == {"username": account, "token": "t-" + access.grant_id[-4:]}
    provision, extend, revoke = program.calls()
    expected = events.encode(
        events.event_for("provision", access, target="runner", account=account)
    )
    assert provision["stdin"].encode() == expected
    assert [json.loads(c["stdin"])["event"] for c in (provision, extend, revoke)] == [
        "provision",
        "extend",
        "revoke",
    ]
    env = provision["env"]
    # Python itself may add LC_CTYPE when the locale is plain C (PEP 538).
    assert set(env) - {"LC_CTYPE"} == {
        "PATH",
        "GREETING",
        "JITACCESS_EVENT",
        "JITACCESS_DELIVERY",
        "JITACCESS_TARGET",
    }
    assert env["JITACCESS_EVENT"] == "provision"
    assert env["JITACCESS_DELIVERY"] == f"provision:{access.grant_id}"
    assert env["JITACCESS_TARGET"] == "runner"
    assert env["GREETING"] == "hello"
    assert revoke["env"]["JITACCESS_EVENT"] == "revoke"


def test_arguments_reach_the_program_literally_never_through_a_shell(
    program: Program, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    hostile = (f"; rm -rf {victim}", f"$(touch {tmp_path / 'pwned'})", "*", "a b", "'\"")
    runner = CommandConnector(command_target(program, *hostile))

    runner.revoke(make_access())

    (call,) = program.calls()
    assert call["argv"] == list(hostile)
    assert victim.is_dir() and not (tmp_path / "pwned").exists()


def test_a_failing_program_raises_with_its_exit_status_and_last_stderr_line(
    program: Program, tmp_path: Path
) -> None:
    key = tmp_path / "runner.key"
    secret = secrets.token_urlsafe(24)
    key.write_text(secret)
    target = command_target(program)
    runner = CommandConnector.from_target(
        Target(target.name, target.type, ConnectionRef(file=str(key)), target.options)
    )
    program.behave("fail")
    access = make_access()

    with pytest.raises(ConnectorError) as caught:
        runner.revoke(access)

    message = str(caught.value)
    assert message.startswith(f"command target runner: revoke of grant {access.grant_id} failed")
    assert "exited with status 3: no such group: ops (admin key ***)" in message
    assert secret not in message and "connecting to the directory" not in message
    excerpt = message.split("exited with status 3: ", 1)[1]
    assert len(excerpt) == 300 and excerpt.endswith("…")
    (call,) = program.calls()
    assert call["env"]["JITACCESS_SECRET"] == secret


def test_a_program_that_runs_too_long_is_killed_with_everything_it_started(
    program: Program,
) -> None:
    runner = CommandConnector(command_target(program, timeout=1))
    program.behave("hang")

    with pytest.raises(ConnectorError, match="did not finish within 1 s"):
        runner.revoke(make_access())

    pids = [int(p) for p in Path(str(program.log) + ".pids").read_text().split()]
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)  # a killed process needs a moment to be reaped
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    # A zombie is dead; only its parent (maybe an init that never reaps) keeps the entry.
    return "\nState:\tZ" not in status


def test_provision_output_that_is_not_json_is_an_error(program: Program) -> None:
    runner = CommandConnector(command_target(program))
    program.behave("chatty")

    with pytest.raises(ConnectorError, match="printed something other than one JSON object"):
        runner.provision(make_access())


def test_list_hands_the_governed_grants_over_and_reads_the_listing(
    runner: CommandConnector, program: Program
) -> None:
    governed: list[dict[str, Any]] = [{"group": "ops"}, {"hosts": ("a", "b")}]

    found = runner.list_access(governed)

    assert found == [
        ExistingAccess(
            "carol", "carol", None, {"governed": [{"group": "ops"}, {"hosts": ["a", "b"]}]}
        )
    ]
    (call,) = program.calls()
    assert json.loads(call["stdin"]) == {
        "event": "list",
        "id": "list:runner",
        "target": "runner",
        "governed": [{"group": "ops"}, {"hosts": ["a", "b"]}],
    }


def test_a_program_that_cannot_list_is_not_asked_to(program: Program) -> None:
    runner = CommandConnector(command_target(program, list=False))

    assert runner.can_list is False
    assert runner.list_access([{"group": "ops"}]) == []
    assert program.calls() == []


def test_remove_and_check_run_the_program_with_their_events(
    runner: CommandConnector, program: Program
) -> None:
    runner.remove(ExistingAccess("carol", "carol", None, {"group": "ops"}))
    runner.check()

    removal, check = (json.loads(c["stdin"]) for c in program.calls())
    assert removal["event"] == "remove" and removal["account"] == "carol"
    assert removal["detail"] == {"group": "ops"}
    assert check == {"event": "check", "id": "check:runner", "target": "runner"}


def test_a_program_name_is_found_on_the_path_the_program_gets(program: Program) -> None:
    python = Path(sys.executable)
    target = Target(
        "runner",
        "command",
        None,
        (
            ("command", (python.name, *program.argv()[1:])),
            ("env", (f"PATH={python.parent}",)),
        ),
    )

    runner = CommandConnector(target)
    runner.check()

    assert runner.argv[0] == str(python.parent / python.name)
    (call,) = program.calls()
    assert call["env"]["PATH"] == str(python.parent)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option command must be a list"),
        ({"command": "/bin/true --flag"}, "option command must be a list"),
        ({"command": ()}, "option command must be a list"),
        ({"command": ("bin/true",)}, "must be an absolute path or a name"),
        ({"command": ("no-such-program-7c1e",)}, "no-such-program-7c1e is not on"),
        ({"command": ("/bin/sh", "")}, "every item must be non-empty text"),
        ({"command": ("/bin/sh",), "timeout": 0}, "timeout must be more than 0"),
        ({"command": ("/bin/sh",), "timeout": True}, "timeout must be a number"),
        ({"command": ("/bin/sh",), "env": ("JITACCESS_EVENT=x",)}, "is set by jitaccess"),
        ({"command": ("/bin/sh",), "env": ("API_TOKEN=x",)}, "looks like a secret"),
        ({"command": ("/bin/sh",), "env": ("NOEQUALS",)}, "is not NAME=value"),
        ({"command": ("/bin/sh",), "shell": True}, "unknown option(s) shell"),
        ({"command": ("/bin/sh",), "list": "no"}, "option list must be true or false"),
    ],
)
def test_bad_options_are_refused_with_the_target_named(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConnectorError, match="command target runner: .*" + re.escape(message)):
        CommandConnector(Target("runner", "command", None, tuple(options.items())))


def test_a_file_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    target = Target("runner", "command", None, (("command", (str(plain),)),))

    with pytest.raises(ConnectorError, match=r"notes\.txt is not an executable file"):
        CommandConnector(target)


def test_shared_access_reports_one_account_per_principal_and_role(program: Program) -> None:
    target = command_target(program, shared=True)
    runner = CommandConnector(target)

    assert runner.per_grant_account is False
    assert CommandConnector.per_grant_account_for(target) is False
    assert CommandConnector.per_grant_account_for(command_target(program)) is True
    assert runner.account_of(make_access()) == "alice@runner/ops"


# --- through the worker, on SQLite -------------------------------------------------------------

POLICY = """
admins: [group:security]
users:
  alice: {{groups: [engineers]}}
  sam: {{groups: [security]}}
targets:
  runner:
    type: command
    connection: {{file: {key}}}
    options:
      command: {command}
      timeout: 10
      env: ["GREETING=hello"]
roles:
  runner/ops:
    target: runner
    grants: {{group: ops, hosts: [a, b]}}
    duration: {{default: 10m, max: 1h}}
eligibility:
  - principals: [group:engineers]
    roles: [runner/ops]
"""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_worker_runs_the_program_to_provision_and_to_revoke(
    program: Program, tmp_path: Path, clock: FakeClock
) -> None:
    key = tmp_path / "runner.key"
    key.write_text("runner-secret\n")
    policy = POLICY.format(key=key, command=json.dumps(list(program.argv())))
    with container_on("sqlite", tmp_path, policy=policy, clock=clock) as app:
        with app.uow() as uow:
            request = request_access(
                uow,
                clock,
                app.connectors,
                requester="alice",
                roles=["runner/ops"],
                duration=timedelta(minutes=10),
                justification="rotate logs",
            )
        assert isinstance(request, Request)
        (grant_id,) = request.grant_ids
        options = WorkerOptions(jitter=lambda: 1.0)
        run_due_work(app.uow, clock, app.connectors, app.box, options)
        with app.uow() as uow:
            credentials = fetch_credentials(
                uow, clock, app.box, grant_id=grant_id, principal="alice"
            )

        clock.advance(timedelta(minutes=10))
        run_due_work(app.uow, clock, app.connectors, app.box, options)
        with app.uow.readonly() as uow:
            grant = uow.grants.get(grant_id)

    assert grant is not None and grant.state is GrantState.EXPIRED
    provision, revoke = program.calls()
    event = json.loads(provision["stdin"])
    assert (event["event"], event["grant_id"], event["principal"]) == (
        "provision",
        grant_id,
        "alice",
    )
    assert event["grants"] == {"group": "ops", "hosts": ["a", "b"]}
    assert credentials == {"username": event["account"], "token": "t-" + grant_id[-4:]}
    assert provision["env"]["JITACCESS_SECRET"] == "runner-secret"
    assert provision["env"]["GREETING"] == "hello"
    assert json.loads(revoke["stdin"])["event"] == "revoke"
