"""Command connector: every change runs a local program with the shared JSON event on stdin
(never through a shell, with a minimal environment); exit status 0 means done."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from jitaccess.adapters.connectors import events
from jitaccess.adapters.connectors.common import options, read_connection
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
STDERR_EXCERPT = 300
_OPTIONS = frozenset({"command", "timeout", "env", "shared", "list"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_LOOKING = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|CREDENTIAL", re.IGNORECASE)
_KILL_GRACE = 5.0


class CommandConnector(events.EventConnector):
    """Runs `options.command` once per event; see docs/connectors.md."""

    # Per grant unless the target sets `shared: true`; see per_grant_account_for.
    per_grant_account = True
    kind = "command"
    needs_connection = False  # an optional secret, passed as JITACCESS_SECRET

    def __init__(self, target: Target, secret: str | None = None) -> None:
        self.target = target
        self._secret = secret
        opts = options(target)
        unknown = sorted(set(opts) - _OPTIONS)
        if unknown:
            raise ConnectorError(
                self._say(
                    f"unknown option(s) {', '.join(unknown)} "
                    f"(expected: {', '.join(sorted(_OPTIONS))})"
                )
            )
        self.extra_env = self._extra_env(opts.get("env"))
        self.path = self.extra_env.get("PATH") or os.environ.get("PATH") or DEFAULT_PATH
        self.argv = self._argv(opts.get("command"))
        self.timeout = self._timeout(opts.get("timeout", DEFAULT_TIMEOUT))
        self.shared = events.is_shared(target)
        self.per_grant_account = not self.shared
        # `list: false` for a program that cannot list: drift detection then skips the target
        # rather than call all its grants missing.
        listing = opts.get("list", True)
        if not isinstance(listing, bool):
            raise ConnectorError(self._say("option list must be true or false"))
        self.can_list = listing

    @classmethod
    def from_target(cls, target: Target) -> CommandConnector:
        # The secret is optional: the program gets it as JITACCESS_SECRET when there is one.
        secret = read_connection(target) if target.connection is not None else None
        return cls(target, secret)

    # --- the Connector protocol ------------------------------------------------------------

    def provision(self, access: Access) -> dict[str, str] | None:
        event = self._event("provision", access)
        where = self._say(f"provision of grant {access.grant_id}")
        credentials = events.credentials_in(self._reply(self._run(event), where), where)
        log.info("command %s provisioned grant %s", self.target.name, access.grant_id)
        return credentials

    def revoke(self, access: Access) -> None:
        # Exit status 0 is the program's word that the access is gone.
        self._run(self._event("revoke", access))
        log.info("command %s revoked grant %s", self.target.name, access.grant_id)

    def extend(self, access: Access) -> None:
        self._run(self._event("extend", access))

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        """What the program prints for a `list` event: `{"access": [...]}` on stdout."""
        if not self.can_list:
            return []
        out = self._run(events.listing_event(target=self.target.name, governed=governed))
        where = self._say("list")
        return events.access_in(self._reply(out, where), where)

    def remove(self, existing: ExistingAccess) -> None:
        self._run(events.removal_event(existing, target=self.target.name))
        log.info("command %s removed %s", self.target.name, existing.account)

    def check(self) -> None:
        """The program exits 0 for a `check` event when it can do its work."""
        self._run(events.check_event(target=self.target.name))

    # --- running the program ----------------------------------------------------------------

    def _run(self, event: Mapping[str, Any]) -> bytes:
        """Run the program with `event` on stdin; its stdout when it exits 0."""
        what = str(event["event"])
        if event.get("grant_id") and what in events.GRANT_ACTIONS:
            what = f"{what} of grant {event['grant_id']}"
        env = {
            "PATH": self.path,
            **self.extra_env,
            "JITACCESS_EVENT": str(event["event"]),
            "JITACCESS_DELIVERY": str(event["id"]),
            "JITACCESS_TARGET": self.target.name,
        }
        if self._secret is not None:
            env["JITACCESS_SECRET"] = self._secret
        try:
            # Its own session, so a timeout can kill whatever it started along with it.
            process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            message = f"{what} failed: cannot run {self.argv[0]}: {reason}"
            raise ConnectorError(self._say(message)) from None
        try:
            out, err = process.communicate(events.encode(event), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise ConnectorError(
                self._say(f"{what} failed: {self.argv[0]} did not finish within {self.timeout:g} s")
            ) from None
        if process.returncode != 0:
            raise ConnectorError(
                self._say(
                    f"{what} failed: {self.argv[0]} {_exit_status(process.returncode)}"
                    f"{self._last_line(err)}"
                )
            )
        return out

    def _reply(self, out: bytes, where: str) -> object:
        if not out.strip():
            return None
        try:
            return json.loads(out)
        except ValueError:
            message = f"{where}: {self.argv[0]} printed something other than one JSON object"
            raise ConnectorError(message) from None

    def _last_line(self, err: bytes) -> str:
        lines = [line.strip() for line in err.decode(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            return ""
        last = self._scrub(lines[-1])
        if len(last) > STDERR_EXCERPT:
            last = last[: STDERR_EXCERPT - 1] + "…"
        return f": {last}"

    # --- options ----------------------------------------------------------------------------

    def _argv(self, value: object) -> list[str]:
        if not isinstance(value, tuple | list) or not value:
            raise ConnectorError(
                self._say("option command must be a list: [executable, argument, ...]")
            )
        if not all(isinstance(arg, str) and arg and "\0" not in arg for arg in value):
            raise ConnectorError(self._say("option command: every item must be non-empty text"))
        program: str = value[0]
        if "/" in program:
            if not Path(program).is_absolute():
                raise ConnectorError(
                    self._say(f"option command: {program} must be an absolute path or a name")
                )
            found: str | None = program
        else:
            found = shutil.which(program, path=self.path)
            if found is None:
                raise ConnectorError(self._say(f"option command: {program} is not on {self.path}"))
        assert found is not None
        if not Path(found).is_file() or not os.access(found, os.X_OK):
            raise ConnectorError(self._say(f"option command: {found} is not an executable file"))
        return [found, *value[1:]]

    def _timeout(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConnectorError(self._say("option timeout must be a number of seconds"))
        if not 0 < value <= MAX_TIMEOUT:
            raise ConnectorError(
                self._say(f"option timeout must be more than 0 and at most {MAX_TIMEOUT:g}")
            )
        return float(value)

    def _extra_env(self, value: object) -> dict[str, str]:
        """`env: ["NAME=value", ...]` (policy options hold lists, not mappings)."""
        if value is None:
            return {}
        if isinstance(value, Mapping):
            pairs = [(str(k), str(v)) for k, v in value.items()]
        elif isinstance(value, tuple | list) and all(isinstance(item, str) for item in value):
            pairs = []
            for item in value:
                name, equals, text = item.partition("=")
                if not equals:
                    raise ConnectorError(self._say(f"option env: {item!r} is not NAME=value"))
                pairs.append((name, text))
        else:
            raise ConnectorError(self._say("option env must be a list of NAME=value strings"))
        found: dict[str, str] = {}
        for name, text in pairs:
            if not _ENV_NAME.fullmatch(name):
                raise ConnectorError(self._say(f"option env: {name!r} is not a variable name"))
            if name.upper().startswith("JITACCESS_"):
                raise ConnectorError(self._say(f"option env: {name} is set by jitaccess"))
            if _SECRET_LOOKING.search(name):
                raise ConnectorError(
                    self._say(
                        f"option env: {name} looks like a secret; secrets never go in the "
                        "policy (use connection: the program gets it as JITACCESS_SECRET)"
                    )
                )
            if "\0" in text:
                raise ConnectorError(self._say(f"option env: the value of {name} holds NUL"))
            found[name] = text
        return found


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=_KILL_GRACE)
    except subprocess.TimeoutExpired:
        # Something left the group and holds the pipes; the program itself is dead.
        log.warning("command %s: its output pipes stayed open after the kill", process.args)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        process.wait()


def _exit_status(code: int) -> str:
    if code < 0:
        with suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"
