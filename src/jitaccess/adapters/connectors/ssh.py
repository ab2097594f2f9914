"""SSH connector: a built-in certificate authority signs one short-lived OpenSSH user certificate
per grant; an early revoke puts the certificate's serial in a key revocation list (KRL) that sshd
reads through `RevokedKeys`.

Files, all next to each other: the CA private key (`connection: {file: ...}`), the binary KRL
(`krl_file`), and `<krl_file>.json`, the record of issued and revoked serials the KRL is built
from (public material only), guarded by `<krl_file>.lock`.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
    SSHCertPublicKeyTypes,
)

from jitaccess.domain.durations import parse_duration
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

log = logging.getLogger(__name__)

CaKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

GRANT_KEY = "ssh_principals"
OPTIONS = ("krl_file", "max_validity", "clock_skew", "extensions", "source_address")
EXTENSIONS = frozenset(
    {
        "permit-pty",
        "permit-port-forwarding",
        "permit-agent-forwarding",
        "permit-X11-forwarding",
        "permit-user-rc",
    }
)
DEFAULT_EXTENSIONS = ("permit-pty",)
DEFAULT_MAX_VALIDITY = timedelta(hours=8)
DEFAULT_CLOCK_SKEW = 60
# Literal names only: no wildcards, commas or spaces, which sshd's principal lists treat specially.
PRINCIPAL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
MAX_PRINCIPALS = 256
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
MIN_RSA_BITS = 2048
_LOCK_WAIT = 30.0
_KEYGEN_TIMEOUT = 30

# One lock per state file, shared by every connector instance in this process (a reloaded policy
# makes a new instance for the same files); flock covers other processes on the host.
_file_locks: dict[Path, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _file_locks_guard:
        return _file_locks.setdefault(path, threading.Lock())


class SshConnector:
    """Signs OpenSSH user certificates; see PRODUCT.md "Connectors"."""

    per_grant_account = True
    required_params = ("ssh_public_key",)

    def __init__(
        self,
        target: Target,
        ca_key_file: Path,
        *,
        krl_file: Path | None = None,
        max_validity: timedelta = DEFAULT_MAX_VALIDITY,
        clock_skew: int = DEFAULT_CLOCK_SKEW,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        source_address: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.target = target
        self.ca_key_file = ca_key_file
        self.krl_file = krl_file or Path(f"{ca_key_file}.krl")
        self.state_file = Path(f"{self.krl_file}.json")
        self.lock_file = Path(f"{self.krl_file}.lock")
        self.max_validity = max_validity
        self.clock_skew = clock_skew
        self.extensions = tuple(extensions)
        self.source_address = source_address
        self._clock = clock or (lambda: datetime.now(UTC))
        self._ca: CaKey | None = None
        self._ca_guard = threading.Lock()

    @classmethod
    def from_target(cls, target: Target) -> SshConnector:
        name = target.name
        ref = target.connection
        if ref is None or not ref.file:
            raise ConnectorError(
                f"ssh target {name}: needs connection: {{file: PATH}}, the CA private key file"
            )
        given = dict(target.options)
        unknown = sorted(set(given) - set(OPTIONS))
        if unknown:
            raise ConnectorError(
                f"ssh target {name}: unknown option(s) {', '.join(unknown)}"
                f" (known: {', '.join(OPTIONS)})"
            )
        try:
            max_validity = parse_duration(str(given.get("max_validity", "8h")))
            clock_skew = _seconds(given.get("clock_skew", DEFAULT_CLOCK_SKEW))
        except ValueError as exc:
            raise ConnectorError(f"ssh target {name}: {exc}") from None
        extensions = given.get("extensions", DEFAULT_EXTENSIONS)
        if isinstance(extensions, str) or not isinstance(extensions, Sequence):
            raise ConnectorError(f"ssh target {name}: extensions must be a list")
        strange = sorted({str(e) for e in extensions} - EXTENSIONS)
        if strange:
            raise ConnectorError(
                f"ssh target {name}: unknown extension(s) {', '.join(strange)}"
                f" (known: {', '.join(sorted(EXTENSIONS))})"
            )
        krl_file = given.get("krl_file")
        return cls(
            target,
            Path(ref.file),
            krl_file=Path(str(krl_file)) if krl_file else None,
            max_validity=max_validity,
            clock_skew=clock_skew,
            extensions=sorted(set(extensions)),
            source_address=_source_address(name, given.get("source_address")),
        )

    @staticmethod
    def grant_problems(grants: dict[str, Any]) -> list[tuple[str, str]]:
        problems = [
            (key, f"unknown key; an ssh role grants only {GRANT_KEY}")
            for key in grants
            if key != GRANT_KEY
        ]
        if GRANT_KEY not in grants:
            return [*problems, (GRANT_KEY, "an ssh role needs ssh_principals: [NAME, ...]")]
        names = grants[GRANT_KEY]
        if isinstance(names, str) or not isinstance(names, Sequence):
            return [*problems, (GRANT_KEY, "must be a list of principal names")]
        if not names:
            problems.append((GRANT_KEY, "must name at least one principal"))
        if len(names) > MAX_PRINCIPALS:
            problems.append((GRANT_KEY, f"at most {MAX_PRINCIPALS} principals"))
        seen: set[str] = set()
        for name in names:
            if not isinstance(name, str) or not PRINCIPAL.fullmatch(name):
                problems.append(
                    (
                        GRANT_KEY,
                        f"{name!r} is not a principal name (letters, digits, '_', '.', '@', '-';"
                        " at most 64, not starting with '.', '@' or '-')",
                    )
                )
            elif name in seen:
                problems.append((GRANT_KEY, f"{name!r} is listed twice"))
            seen.add(str(name))
        return problems

    # --- the Connector protocol ------------------------------------------------------------

    def provision(self, access: Access) -> dict[str, str]:
        principals = self._principals(access)
        public_key = self._requester_key(access)
        key_line = _openssh(public_key)
        ca = self._ca_key()
        with self._locked():
            state = self._load()
            now = self._now()
            self._prune(state, now)
            entry = state["grants"].get(access.grant_id)
            if entry is not None and entry["revoked"]:
                raise ConnectorError(
                    self._say(f"grant {access.grant_id} was revoked; it gets no new certificate")
                )
            if entry is not None and entry["valid_before"] <= now:
                raise ConnectorError(self._say(f"grant {access.grant_id} has already ended"))
            same = entry is not None and (entry["public_key"], entry["principals"]) == (
                key_line,
                principals,
            )
            if entry is None or not same:
                # A retry keeps the first serial and window, so one KRL entry revokes them all.
                if entry is None:
                    serial = self._new_serial(state)
                    valid_after, valid_before = self._window(access, now)
                else:
                    serial, valid_after = entry["serial"], entry["valid_after"]
                    valid_before = entry["valid_before"]
                key_id = _key_id(access)
                cert = self._sign(
                    ca, public_key, serial, key_id, principals, valid_after, valid_before
                )
                entry = {
                    "serial": serial,
                    "principal": access.principal,
                    "principals": principals,
                    "key_id": key_id,
                    "public_key": key_line,
                    "certificate": f"{cert.public_bytes().decode()} {key_id}",
                    "valid_after": valid_after,
                    "valid_before": valid_before,
                    "ends_at": int(access.ends_at.timestamp()),
                    "revoked": False,
                }
                state["grants"][access.grant_id] = entry
                self._save(state)
            if not self.krl_file.exists():
                self._write_krl(state)
        log.info(
            "issued ssh certificate serial %s for grant %s (%s) until %s",
            entry["serial"],
            access.grant_id,
            ",".join(principals),
            _iso(entry["valid_before"]),
        )
        return {
            "certificate": entry["certificate"],
            "serial": str(entry["serial"]),
            "key_id": entry["key_id"],
            "principals": ",".join(entry["principals"]),
            "valid_after": _iso(entry["valid_after"]),
            "valid_before": _iso(entry["valid_before"]),
        }

    def revoke(self, access: Access) -> None:
        with self._locked():
            state = self._load()
            now = self._now()
            self._prune(state, now)
            entry = state["grants"].get(access.grant_id)
            if entry is None:
                # Never provisioned: remember the revoke so a late provision retry is refused.
                state["grants"][access.grant_id] = {
                    "serial": None,
                    "principal": access.principal,
                    "valid_before": 0,
                    "ends_at": int(access.ends_at.timestamp()),
                    "revoked": True,
                }
                self._save(state)
                return
            self._revoke_entry(state, entry, now)
        log.info("revoked ssh certificate of grant %s", access.grant_id)

    def extend(self, access: Access) -> None:
        raise ConnectorError(
            self._say(
                "ssh certificates cannot be extended: the grant's certificate keeps its end;"
                " request a new grant"
            )
        )

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        # Certificates are bearer credentials: nothing on a host can be listed from here, so the
        # issued record is the whole truth (`governed` adds nothing).
        with self._locked():
            state = self._load()
        now = self._now()
        return [
            ExistingAccess(
                principal=entry["principal"],
                account=f"serial:{entry['serial']}",
                grant_id=grant_id,
                detail={
                    "principals": list(entry["principals"]),
                    "key_id": entry["key_id"],
                    "valid_before": _iso(entry["valid_before"]),
                },
            )
            for grant_id, entry in sorted(state["grants"].items())
            if entry["serial"] is not None and not entry["revoked"] and entry["valid_before"] > now
        ]

    def remove(self, existing: ExistingAccess) -> None:
        match = re.fullmatch(r"serial:(\d+)", existing.account)
        if match is None:
            raise ConnectorError(self._say(f"{existing.account!r} is not a certificate serial"))
        serial = int(match[1])
        with self._locked():
            state = self._load()
            now = self._now()
            self._prune(state, now)
            found = [e for e in state["grants"].values() if e["serial"] == serial]
            if not found:
                log.info(
                    "ssh certificate serial %s is unknown or expired: nothing to remove", serial
                )
                return
            for entry in found:
                self._revoke_entry(state, entry, now)
        log.info("removed ssh certificate serial %s", serial)

    def account_of(self, access: Access) -> str:
        with self._locked():
            entry = self._load()["grants"].get(access.grant_id)
        if entry is None or entry["serial"] is None:
            return f"grant:{access.grant_id}"  # no certificate: matches nothing list_access shows
        return f"serial:{entry['serial']}"

    def check(self) -> None:
        _keygen_binary(self._say)
        directory = self.krl_file.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise ConnectorError(self._say(f"KRL directory {directory} is missing or not writable"))
        self._ca_key()
        with self._locked():
            self._load()
        self.krl_bytes()

    # --- what the API serves to sshd hosts ---------------------------------------------------

    def ca_public_line(self) -> str:
        """The line for sshd's `TrustedUserCAKeys`."""
        public = _openssh(self._ca_key().public_key())
        return f"{public} jitaccess-ca:{self.target.name}"

    def krl_bytes(self) -> bytes:
        """The current KRL for sshd's `RevokedKeys` (written empty on first use: sshd refuses
        every key when its RevokedKeys file is missing)."""
        with self._locked():
            if not self.krl_file.exists():
                self._write_krl(self._load())
            try:
                return self.krl_file.read_bytes()
            except OSError as exc:
                raise ConnectorError(
                    self._say(f"cannot read KRL {self.krl_file}: {exc.strerror}")
                ) from None

    # --- the certificate authority -----------------------------------------------------------

    def _ca_key(self) -> CaKey:
        with self._ca_guard:
            if self._ca is None:
                self._ca = self._load_ca() if self.ca_key_file.exists() else self._create_ca()
            return self._ca

    def _load_ca(self) -> CaKey:
        path = self.ca_key_file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConnectorError(self._say(f"cannot read CA key {path}: {exc.strerror}")) from None
        if path.stat().st_mode & 0o077:
            log.warning("ssh target %s: CA key %s is readable by others", self.target.name, path)
        # Parser messages are dropped (`from None`): the key's bytes must never reach a message.
        key: object
        try:
            if b"OPENSSH PRIVATE KEY" in data:
                key = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConnectorError(
                self._say(f"CA key {path} is passphrase-protected; jitaccess needs it unencrypted")
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise ConnectorError(
                self._say(f"CA key {path} is not an OpenSSH or PEM private key it can read")
            ) from None
        if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            return key
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
            return key
        raise ConnectorError(
            self._say(f"CA key {path} must be Ed25519, ECDSA or RSA of 2048+ bits")
        )

    def _create_ca(self) -> CaKey:
        path = self.ca_key_file
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        try:
            # Written whole under a temporary name (mode 0600), then linked: never a half-written
            # key, and a key another process made first wins (link refuses to replace it).
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(pem)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(temporary, path)
            finally:
                os.unlink(temporary)
        except FileExistsError:
            return self._load_ca()
        except OSError as exc:
            raise ConnectorError(
                self._say(f"cannot create CA key {path}: {exc.strerror or type(exc).__name__}")
            ) from None
        log.warning("ssh target %s: created a new CA key %s", self.target.name, path)
        return key

    def _sign(
        self,
        ca: CaKey,
        public_key: SSHCertPublicKeyTypes,
        serial: int,
        key_id: str,
        principals: list[str],
        valid_after: int,
        valid_before: int,
    ) -> SSHCertificate:
        builder = (
            SSHCertificateBuilder()
            .public_key(public_key)
            .serial(serial)
            .type(SSHCertificateType.USER)
            .key_id(key_id.encode())
            .valid_principals([p.encode() for p in principals])
            .valid_after(valid_after)
            .valid_before(valid_before)
        )
        for extension in self.extensions:
            builder = builder.add_extension(extension.encode(), b"")
        if self.source_address:
            builder = builder.add_critical_option(b"source-address", self.source_address.encode())
        return builder.sign(ca)

    def _window(self, access: Access, now: int) -> tuple[int, int]:
        start = int(access.starts_at.timestamp())
        cap = max(now, start) + int(self.max_validity.total_seconds())
        valid_before = min(int(access.ends_at.timestamp()), cap)
        if valid_before <= now:
            raise ConnectorError(self._say(f"grant {access.grant_id} has already ended"))
        return max(0, start - self.clock_skew), valid_before

    # --- the revocation list -----------------------------------------------------------------

    def _revoke_entry(self, state: dict[str, Any], entry: dict[str, Any], now: int) -> None:
        """Mark `entry` revoked, record its serial, and make sure the KRL on disk has it."""
        entry["revoked"] = True
        serial = entry["serial"]
        if serial is not None and entry["valid_before"] + self.clock_skew > now:
            state["revoked"][str(serial)] = entry["valid_before"]
        # The record first: a KRL rewritten by anyone from now on includes this serial.
        self._save(state)
        wanted = {int(s) for s in state["revoked"]}
        if _uncovered(wanted, self._krl_ranges()):
            self._write_krl(state)
            missing = _uncovered(wanted, self._krl_ranges())
            if missing:
                raise ConnectorError(
                    self._say(
                        f"KRL {self.krl_file} lacks serial(s) {sorted(missing)} after rewrite"
                    )
                )

    def _write_krl(self, state: dict[str, Any]) -> None:
        """Rebuild the KRL from the recorded serials: write a temporary file, then rename."""
        keygen = _keygen_binary(self._say)
        directory = self.krl_file.parent
        serials = sorted(int(s) for s in state["revoked"])
        ca_line = self.ca_public_line()
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
        keygen = _keygen_binary(self._say)
        listing = self._keygen(keygen, "-Q", "-l", "-f", str(self.krl_file))
        ours = _fingerprint(self.ca_public_line())
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

    # --- the state file ----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
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

    def _load(self) -> dict[str, Any]:
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

    def _save(self, state: dict[str, Any]) -> None:
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

    def _prune(self, state: dict[str, Any], now: int) -> None:
        """Forget what has expired everywhere (allowing hosts `clock_skew` of slow clocks)."""
        horizon = now - self.clock_skew
        state["revoked"] = {s: until for s, until in state["revoked"].items() if until > horizon}
        state["grants"] = {
            grant_id: entry
            for grant_id, entry in state["grants"].items()
            if max(entry["valid_before"], entry["ends_at"]) > horizon
        }

    # --- plumbing ---------------------------------------------------------------------------

    def _principals(self, access: Access) -> list[str]:
        problems = self.grant_problems(dict(access.grants))
        if problems:
            raise ConnectorError(
                self._say(
                    f"grant {access.grant_id}: " + "; ".join(f"{k}: {r}" for k, r in problems)
                )
            )
        return [str(name) for name in access.grants[GRANT_KEY]]

    def _requester_key(self, access: Access) -> SSHCertPublicKeyTypes:
        """The requester's public key. The value is never quoted: a pasted private key must not
        end up in a log line or an error."""
        wrong = self._say(
            f"grant {access.grant_id}: ssh_public_key is not an OpenSSH public key line"
            f" ({', '.join(KEY_TYPES)} followed by the base64 key)"
        )
        line = access.params.get("ssh_public_key")
        if not isinstance(line, str) or len(line) > 16_384 or "\n" in line.strip():
            raise ConnectorError(wrong)
        fields = line.split()
        if len(fields) < 2 or fields[0] not in KEY_TYPES:
            raise ConnectorError(wrong)  # DSA, certificates, security keys and junk end here
        try:
            b64decode(fields[1], validate=True)
            key = serialization.load_ssh_public_identity(f"{fields[0]} {fields[1]}".encode())
        except (ValueError, UnsupportedAlgorithm):
            raise ConnectorError(wrong) from None
        if isinstance(key, SSHCertificate):
            raise ConnectorError(wrong)
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise ConnectorError(
                self._say(f"grant {access.grant_id}: RSA keys need {MIN_RSA_BITS}+ bits")
            )
        if not isinstance(
            key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
        ):
            raise ConnectorError(wrong)
        return key

    def _new_serial(self, state: dict[str, Any]) -> int:
        used = {e["serial"] for e in state["grants"].values()} | {int(s) for s in state["revoked"]}
        while True:
            serial = secrets.randbits(64)
            if serial and serial not in used:
                return serial

    def _now(self) -> int:
        return int(self._clock().timestamp())

    def _say(self, message: str) -> str:
        return f"ssh target {self.target.name}: {message.strip()}"


def _openssh(key: SSHCertPublicKeyTypes) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _key_id(access: Access) -> str:
    # Key ids show up in sshd's log lines and in the certificate comment: no spaces or controls.
    return re.sub(r"[\s\x00-\x1f\x7f]", "_", f"jitaccess:{access.grant_id}:{access.principal}")


def _uncovered(serials: set[int], ranges: Sequence[tuple[int, int]]) -> set[int]:
    return {s for s in serials if not any(low <= s <= high for low, high in ranges)}


def _fingerprint(public_line: str) -> str:
    digest = hashlib.sha256(b64decode(public_line.split()[1])).digest()
    return "SHA256:" + b64encode(digest).decode().rstrip("=")


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _seconds(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"clock_skew must be seconds or a duration, not {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 3600:
            raise ValueError("clock_skew must be 0 to 3600 seconds")
        return value
    return _seconds(int(parse_duration(str(value)).total_seconds()))


def _source_address(name: str, value: object) -> str | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise ConnectorError(f"ssh target {name}: source_address must be addresses or CIDRs")
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ConnectorError(
                f"ssh target {name}: source_address {str(item).strip()!r} is not an address or CIDR"
            ) from None
    return ",".join(networks)


def _keygen_binary(say: Callable[[str], str]) -> str:
    found = shutil.which("ssh-keygen") or shutil.which("ssh-keygen", path="/usr/bin:/usr/local/bin")
    if found is None:
        raise ConnectorError(say("ssh-keygen (OpenSSH) is not installed; it writes the KRL"))
    return found


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
