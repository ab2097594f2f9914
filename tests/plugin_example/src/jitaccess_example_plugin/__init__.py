"""A worked example of a jitaccess connector plugin: the "target" is a JSON file of accounts and
the groups they belong to, guarded by an admin key (the target's `connection`).

    {"admin_key_sha256": "<hex>",
     "accounts": {"jit_alice_1a2b3c4d": {"groups": ["ops"], "expires_at": "...",
                                         "managed_by": "jitaccess", "grant_id": "...",
                                         "principal": "alice", "token_sha256": "<hex>"},
                  "carol": {"groups": ["ops"]}}}      <- made by hand

Every grant gets its own account (`per_grant_account = True`). See README.md next to
pyproject.toml and docs/connectors.md in jitaccess for the contract this implements.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

from jitaccess.adapters.connectors.common import read_connection
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

log = logging.getLogger(__name__)

GRANTS_KEY = "example_groups"
MANAGED = "jitaccess"
_GROUP = re.compile(r"[a-z][a-z0-9_-]{0,31}")

Directory = dict[str, Any]


def account_name(principal: str, grant_id: str) -> str:
    """`jit_<principal>_<last 8 of the grant id>`: readable, and unique per grant."""
    person = re.sub(r"[^a-z0-9]+", "_", principal.lower()).strip("_")[:19].strip("_") or "x"
    suffix = re.sub(r"[^a-z0-9]", "", grant_id.lower())[-8:]
    return f"jit_{person}_{suffix}"


class ExampleConnector:
    per_grant_account = True
    # Request parameters every grant needs (the ssh connector asks for ssh_public_key); the
    # request is refused without them and they arrive in `access.params`. None here.
    required_params: tuple[str, ...] = ()

    def __init__(self, target: Target, admin_key: str, path: Path) -> None:
        self.target = target
        self.path = path
        self._key_hash = hashlib.sha256(admin_key.encode()).hexdigest()

    @classmethod
    def from_target(cls, target: Target) -> ExampleConnector:
        # read_connection resolves `connection: {env: VAR}` or `{file: PATH}`; its errors name
        # the reference, never the value.
        admin_key = read_connection(target)
        path = dict(target.options).get("path")
        if not isinstance(path, str) or not Path(path).is_absolute():
            raise ConnectorError(f"example target {target.name}: option path must be absolute")
        return cls(target, admin_key, Path(path))

    @staticmethod
    def grant_problems(grants: dict[str, Any]) -> list[tuple[str, str]]:
        """Called by the policy loader for every role on an `example` target; each problem is
        reported at the role's file and line. Lists arrive as tuples."""
        problems = [
            (key, f"unknown key (expected {GRANTS_KEY})") for key in grants if key != GRANTS_KEY
        ]
        groups = grants.get(GRANTS_KEY)
        if groups is None:
            problems.append(("", f"needs {GRANTS_KEY}: [GROUP, ...]"))
        elif not isinstance(groups, tuple | list) or not groups:
            problems.append((GRANTS_KEY, "must be a non-empty list of group names"))
        else:
            for group in groups:
                if not isinstance(group, str) or not _GROUP.fullmatch(group):
                    problems.append((GRANTS_KEY, f"{group!r} is not a group name like ops"))
        return problems

    # --- the Connector protocol ------------------------------------------------------------

    def provision(self, access: Access) -> dict[str, str]:
        """Create (or, on a retry, refresh) the grant's account; its token is shown once."""
        name = self.account_of(access)
        token = secrets.token_urlsafe(24)
        with self._editing() as directory:
            found = directory["accounts"].get(name)
            if found is not None and found.get("grant_id") != access.grant_id:
                raise ConnectorError(self._say(f"account {name} exists and is not this grant's"))
            directory["accounts"][name] = {
                "groups": sorted(_groups(access)),
                "expires_at": access.ends_at.astimezone(UTC).isoformat(),
                "managed_by": MANAGED,
                "grant_id": access.grant_id,
                "principal": access.principal,
                # Only a hash is kept: the token itself exists only in the sealed credentials.
                "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            }
        log.info("example %s: provisioned %s for grant %s", self.target.name, name, access.grant_id)
        return {"username": name, "token": token}

    def revoke(self, access: Access) -> None:
        """Returns only once the account is gone; a second call finds nothing and is done."""
        name = self.account_of(access)
        with self._editing() as directory:
            found = directory["accounts"].get(name)
            if found is not None and found.get("grant_id") == access.grant_id:
                del directory["accounts"][name]
        if name in self._load()["accounts"]:  # confirm, as a real target would be re-read
            raise ConnectorError(self._say(f"account {name} is still there after revoke"))

    def extend(self, access: Access) -> None:
        name = self.account_of(access)
        with self._editing() as directory:
            found = directory["accounts"].get(name)
            if found is None or found.get("grant_id") != access.grant_id:
                raise ConnectorError(self._say(f"account {name} of {access.grant_id} is missing"))
            found["expires_at"] = access.ends_at.astimezone(UTC).isoformat()

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        """Accounts jitaccess made, and any account (hand-made too) in a governed group."""
        watched = {g for grants in governed for g in grants.get(GRANTS_KEY, ())}
        found = []
        for name, entry in sorted(self._load()["accounts"].items()):
            held = sorted(set(entry.get("groups", ())) & watched)
            if entry.get("managed_by") == MANAGED:
                detail = {"groups": entry.get("groups", []), "expires_at": entry["expires_at"]}
                found.append(ExistingAccess(entry["principal"], name, entry["grant_id"], detail))
            elif held:
                found.append(ExistingAccess(entry.get("principal"), name, None, {"groups": held}))
        return found

    def remove(self, existing: ExistingAccess) -> None:
        """Drift repair: drop an account jitaccess made, or take a hand-made account out of the
        governed groups it was found in (the account itself is not ours to delete)."""
        with self._editing() as directory:
            entry = directory["accounts"].get(existing.account)
            if entry is None:
                return
            if entry.get("managed_by") == MANAGED:
                del directory["accounts"][existing.account]
            else:
                drop = set(existing.detail.get("groups", ()))
                entry["groups"] = [g for g in entry.get("groups", ()) if g not in drop]

    def account_of(self, access: Access) -> str:
        return account_name(access.principal, access.grant_id)

    def check(self) -> None:
        self._load()

    # --- the "target" -----------------------------------------------------------------------

    def _load(self) -> Directory:
        """The directory, after checking the admin key against the one it was set up with."""
        try:
            directory = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConnectorError(self._say(f"{self.path} does not exist")) from None
        except OSError as exc:
            raise ConnectorError(self._say(f"cannot read {self.path}: {exc.strerror}")) from None
        except ValueError:
            raise ConnectorError(self._say(f"{self.path} is not JSON")) from None
        if not isinstance(directory, dict) or not isinstance(directory.get("accounts"), dict):
            raise ConnectorError(self._say(f"{self.path} has no accounts"))
        expected = str(directory.get("admin_key_sha256", ""))
        if not hmac.compare_digest(expected, self._key_hash):
            # Like a refused login: say which key is wrong, never what it is.
            raise ConnectorError(self._say(f"the admin key is not the one {self.path} expects"))
        return directory

    @contextmanager
    def _editing(self) -> Iterator[Directory]:
        """Read, change and replace the file under a lock, so concurrent workers never lose
        each other's changes and a crash leaves the old file or the new one, never half."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            directory = self._load()
            yield directory
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(directory, out, indent=2, sort_keys=True)
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise

    def _say(self, message: str) -> str:
        return f"example target {self.target.name}: {message}"


def _groups(access: Access) -> list[str]:
    groups = access.grants.get(GRANTS_KEY, ())
    if not groups or not all(isinstance(g, str) for g in groups):
        raise ConnectorError(f"grant {access.grant_id}: {GRANTS_KEY} must be group names")
    return list(groups)
