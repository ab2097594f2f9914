"""SSH connector: a built-in certificate authority signs one short-lived OpenSSH user certificate
per grant; an early revoke puts the certificate's serial in a key revocation list (KRL) that sshd
reads through `RevokedKeys`.

Files, all next to each other: the CA private key (`connection: {file: ...}`), the binary KRL
(`krl_file`), and `<krl_file>.json`, the record of issued and revoked serials the KRL is built
from (public material only), guarded by `<krl_file>.lock`. The CA lives in `ssh_ca`, the record
and the KRL in `ssh_krl`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jitaccess.adapters.connectors.ssh_ca import (
    CertificateAuthority,
    key_id,
    openssh,
    requester_key,
    sign,
)
from jitaccess.adapters.connectors.ssh_krl import KrlStore, keygen_binary, new_serial
from jitaccess.domain.durations import parse_duration
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

log = logging.getLogger(__name__)

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


class SshConnector:
    """Signs OpenSSH user certificates; see PRODUCT.md "Connectors"."""

    per_grant_account = True
    required_params = ("ssh_public_key",)
    can_extend = False  # a certificate's validity cannot move: extensions are refused early

    @staticmethod
    def param_problems(params: Mapping[str, str]) -> list[tuple[str, str]]:
        """Checked when the request is made, so a bad key never reaches the worker."""
        probe = Access("request", "", "", "", {}, _EPOCH, _EPOCH, params=dict(params))
        try:
            requester_key(probe, lambda message: message)
        except ConnectorError as error:
            return [("ssh_public_key", error.message.removeprefix("grant request: "))]
        return []

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
        self.max_validity = max_validity
        self.clock_skew = clock_skew
        self.extensions = tuple(extensions)
        self.source_address = source_address
        self._clock = clock or (lambda: datetime.now(UTC))
        self._ca = CertificateAuthority(ca_key_file, target.name, self._say)
        self._krl = KrlStore(
            krl_file or Path(f"{ca_key_file}.krl"),
            clock_skew=clock_skew,
            ca_public_line=self.ca_public_line,
            say=self._say,
        )
        self.krl_file = self._krl.krl_file
        self.state_file = self._krl.state_file
        self.lock_file = self._krl.lock_file

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
        public_key = requester_key(access, self._say)
        key_line = openssh(public_key)
        ca = self._ca.key()
        with self._krl.locked():
            state = self._krl.load()
            now = self._now()
            self._krl.prune(state, now)
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
                    serial = new_serial(state)
                    valid_after, valid_before = self._window(access, now)
                else:
                    serial, valid_after = entry["serial"], entry["valid_after"]
                    valid_before = entry["valid_before"]
                identity = key_id(access)
                cert = sign(
                    ca,
                    public_key,
                    serial=serial,
                    key_id=identity,
                    principals=principals,
                    valid_after=valid_after,
                    valid_before=valid_before,
                    extensions=self.extensions,
                    source_address=self.source_address,
                )
                entry = {
                    "serial": serial,
                    "principal": access.principal,
                    "principals": principals,
                    "key_id": identity,
                    "public_key": key_line,
                    "certificate": f"{cert.public_bytes().decode()} {identity}",
                    "valid_after": valid_after,
                    "valid_before": valid_before,
                    "ends_at": int(access.ends_at.timestamp()),
                    "revoked": False,
                }
                state["grants"][access.grant_id] = entry
                self._krl.save(state)
            if not self.krl_file.exists():
                self._krl.write_krl(state)
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
        with self._krl.locked():
            state = self._krl.load()
            now = self._now()
            self._krl.prune(state, now)
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
                self._krl.save(state)
                return
            self._krl.revoke_entry(state, entry, now)
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
        with self._krl.locked():
            state = self._krl.load()
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
        with self._krl.locked():
            state = self._krl.load()
            now = self._now()
            self._krl.prune(state, now)
            found = [e for e in state["grants"].values() if e["serial"] == serial]
            if not found:
                log.info(
                    "ssh certificate serial %s is unknown or expired: nothing to remove", serial
                )
                return
            for entry in found:
                self._krl.revoke_entry(state, entry, now)
        log.info("removed ssh certificate serial %s", serial)

    def account_of(self, access: Access) -> str:
        with self._krl.locked():
            entry = self._krl.load()["grants"].get(access.grant_id)
        if entry is None or entry["serial"] is None:
            return f"grant:{access.grant_id}"  # no certificate: matches nothing list_access shows
        return f"serial:{entry['serial']}"

    def check(self) -> None:
        keygen_binary(self._say)
        directory = self.krl_file.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise ConnectorError(self._say(f"KRL directory {directory} is missing or not writable"))
        self._ca.key()
        with self._krl.locked():
            self._krl.load()
        self.krl_bytes()

    # --- what the API serves to sshd hosts ---------------------------------------------------

    def ca_public_line(self) -> str:
        """The line for sshd's `TrustedUserCAKeys`."""
        return self._ca.public_line()

    def krl_bytes(self) -> bytes:
        """The current KRL for sshd's `RevokedKeys` (written empty on first use: sshd refuses
        every key when its RevokedKeys file is missing)."""
        return self._krl.read_krl()

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

    def _window(self, access: Access, now: int) -> tuple[int, int]:
        start = int(access.starts_at.timestamp())
        cap = max(now, start) + int(self.max_validity.total_seconds())
        valid_before = min(int(access.ends_at.timestamp()), cap)
        if valid_before <= now:
            raise ConnectorError(self._say(f"grant {access.grant_id} has already ended"))
        return max(0, start - self.clock_skew), valid_before

    def _now(self) -> int:
        return int(self._clock().timestamp())

    def _say(self, message: str) -> str:
        return f"ssh target {self.target.name}: {message.strip()}"


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
