"""The ssh connector's record of issued and revoked serials (`<krl_file>.json`, guarded by
`<krl_file>.lock`) and the key revocation list ssh-keygen builds from it for sshd."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from jitaccess.domain.errors import ConnectorError

log = logging.getLogger(__name__)

_LOCK_WAIT = 30.0
_KEYGEN_TIMEOUT = 30

# One lock per state file, shared by every connector instance in this process (a reloaded policy
# makes a new instance for the same files); flock covers other processes on the host.
_file_locks: dict[Path, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _file_locks_guard:
        return _file_locks.setdefault(path, threading.Lock())


class KrlStore:
    """The state file and the KRL next to it. Every method but `locked` (and `read_krl`, which
    takes the lock itself) expects the caller to hold the lock."""

    def __init__(
        self,
        krl_file: Path,
        *,
        clock_skew: int,
        ca_public_line: Callable[[], str],
        say: Callable[[str], str],
    ) -> None:
        self.krl_file = krl_file
        self.state_file = Path(f"{krl_file}.json")
        self.lock_file = Path(f"{krl_file}.lock")
        self.clock_skew = clock_skew
        self._ca_public_line = ca_public_line
        self._say = say

    # --- the state file ----------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        lock = _lock_for(self.state_file.absolute())
        if not lock.acquire(timeout=_LOCK_WAIT):
            raise ConnectorError(self._say("timed out waiting for the KRL lock"))
        try:
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise ConnectorError(
                    self._say(f"cannot open lock file {self.lock_file}: {exc.strerror}")
                ) from None
            try:
                deadline = time.monotonic() + _LOCK_WAIT
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise ConnectorError(
                                self._say(f"another process holds {self.lock_file}")
                            ) from None
                        time.sleep(0.01)
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            lock.release()

    def load(self) -> dict[str, Any]:
        try:
            text = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"version": 1, "grants": {}, "revoked": {}}
        except OSError as exc:
            raise ConnectorError(
                self._say(f"cannot read {self.state_file}: {exc.strerror}")
            ) from None
        try:
            state = json.loads(text)
            if not (isinstance(state["grants"], dict) and isinstance(state["revoked"], dict)):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ConnectorError(
                self._say(f"{self.state_file} is not a jitaccess ssh record")
            ) from None
        return dict(state)

    def save(self, state: dict[str, Any]) -> None:
        data = json.dumps(state, indent=1, sort_keys=True).encode()
        try:
            fd, temporary = tempfile.mkstemp(
                dir=self.state_file.parent, prefix=f".{self.state_file.name}."
            )
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.state_file)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
            _fsync_directory(self.state_file.parent)
        except OSError as exc:
            raise ConnectorError(
                self._say(f"cannot write {self.state_file}: {exc.strerror}")
            ) from None

    def prune(self, state: dict[str, Any], now: int) -> None:
        """Forget what has expired everywhere (allowing hosts `clock_skew` of slow clocks)."""
        horizon = now - self.clock_skew
        state["revoked"] = {s: until for s, until in state["revoked"].items() if until > horizon}
        state["grants"] = {
            grant_id: entry
            for grant_id, entry in state["grants"].items()
            if max(entry["valid_before"], entry["ends_at"]) > horizon
        }

    # --- the revocation list -----------------------------------------------------------------

    def revoke_entry(self, state: dict[str, Any], entry: dict[str, Any], now: int) -> None:
        """Mark `entry` revoked, record its serial, and make sure the KRL on disk has it."""
        entry["revoked"] = True
        serial = entry["serial"]
        if serial is not None and entry["valid_before"] + self.clock_skew > now:
            state["revoked"][str(serial)] = entry["valid_before"]
        # The record first: a KRL rewritten by anyone from now on includes this serial.
        self.save(state)
        wanted = {int(s) for s in state["revoked"]}
        if _uncovered(wanted, self._krl_ranges()):
            self.write_krl(state)
            missing = _uncovered(wanted, self._krl_ranges())
            if missing:
                raise ConnectorError(
                    self._say(
                        f"KRL {self.krl_file} lacks serial(s) {sorted(missing)} after rewrite"
                    )
                )

    def read_krl(self) -> bytes:
        """The KRL's bytes, written empty first if it is missing."""
        with self.locked():
            if not self.krl_file.exists():
                self.write_krl(self.load())
            try:
                return self.krl_file.read_bytes()
            except OSError as exc:
                raise ConnectorError(
                    self._say(f"cannot read KRL {self.krl_file}: {exc.strerror}")
                ) from None

    def write_krl(self, state: dict[str, Any]) -> None:
        """Rebuild the KRL from the recorded serials: write a temporary file, then rename."""
        keygen = keygen_binary(self._say)
        directory = self.krl_file.parent
        serials = sorted(int(s) for s in state["revoked"])
        ca_line = self._ca_public_line()
        try:
            with tempfile.TemporaryDirectory(dir=directory, prefix=".krl-") as work:
                spec = Path(work, "spec")
                spec.write_text("".join(f"serial: {s}\n" for s in serials))
                ca_public = Path(work, "ca.pub")
                ca_public.write_text(ca_line + "\n")
                built = Path(work, "krl")
                version = str(time.time_ns() // 1000)  # informational; rises with every rewrite
                self._keygen(
                    keygen, "-k", "-z", version, "-s", str(ca_public), "-f", str(built), str(spec)
                )
                built.chmod(0o644)
                with built.open("rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(built, self.krl_file)
                _fsync_directory(directory)
        except OSError as exc:
            raise ConnectorError(
                self._say(f"cannot write KRL {self.krl_file}: {exc.strerror or exc}")
            ) from None
        log.info("wrote KRL %s with %d serial(s)", self.krl_file, len(serials))

    def _krl_ranges(self) -> list[tuple[int, int]]:
        """The serial ranges the KRL on disk revokes for our CA, as `ssh-keygen -Q -l` reads
        them (it writes consecutive serials as one range)."""
        if not self.krl_file.exists():
            return []
        keygen = keygen_binary(self._say)
        listing = self._keygen(keygen, "-Q", "-l", "-f", str(self.krl_file))
        ours = _fingerprint(self._ca_public_line())
        found = []
        section = None
        for line in listing.splitlines():
            if line.startswith("# CA key "):
                section = line.split()[-1]
            elif section == ours and line.startswith("serial: "):
                low, _, high = line.removeprefix("serial: ").strip().partition("-")
                found.append((int(low), int(high or low)))
        return found

    def _keygen(self, keygen: str, *args: str) -> str:
        try:
            result = subprocess.run(
                [keygen, *args],
                capture_output=True,
                text=True,
                timeout=_KEYGEN_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConnectorError(self._say(f"ssh-keygen {args[0]} failed: {exc}")) from None
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise ConnectorError(
                self._say(f"ssh-keygen {args[0]} exited {result.returncode}: {reason}")
            )
        return result.stdout


def new_serial(state: dict[str, Any]) -> int:
    """A random serial no issued or revoked certificate in `state` has."""
    used = {e["serial"] for e in state["grants"].values()} | {int(s) for s in state["revoked"]}
    while True:
        serial = secrets.randbits(64)
        if serial and serial not in used:
            return serial


def keygen_binary(say: Callable[[str], str]) -> str:
    found = shutil.which("ssh-keygen") or shutil.which("ssh-keygen", path="/usr/bin:/usr/local/bin")
    if found is None:
        raise ConnectorError(say("ssh-keygen (OpenSSH) is not installed; it writes the KRL"))
    return found


def _uncovered(serials: set[int], ranges: Sequence[tuple[int, int]]) -> set[int]:
    return {s for s in serials if not any(low <= s <= high for low, high in ranges)}


def _fingerprint(public_line: str) -> str:
    digest = hashlib.sha256(b64decode(public_line.split()[1])).digest()
    return "SHA256:" + b64encode(digest).decode().rstrip("=")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
