"""The JSON protocol the webhook and command connectors share: the event jitaccess sends, the
replies it reads back, and the checks on what a role may put in `grants` for them.

An event is deterministic (no send time in it), so a retried delivery carries the same bytes and
a receiver can recognise it by its `id`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

ACCOUNT_PREFIX = "jit_"
GRANT_ACTIONS = ("provision", "revoke", "extend")

_GRANTS_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MAX_TEXT = 1000
_MAX_ITEMS = 100
_SCALARS = (str, int, bool, type(None))


def account_name(principal: str, grant_id: str) -> str:
    """`jit_<principal>_<grant suffix>`, at most 32 characters of [a-z0-9_] (a Unix user name)."""
    person = re.sub(r"[^a-z0-9]+", "_", principal.lower()).strip("_")[:19].strip("_") or "x"
    suffix = re.sub(r"[^a-z0-9]", "", grant_id.lower())[-8:]
    if not suffix:
        raise ConnectorError(f"grant id {grant_id!r} has no letters or digits to name an account")
    return f"{ACCOUNT_PREFIX}{person}_{suffix}"


def shared_account(principal: str, role: str) -> str:
    """The account of shared access: one per (principal, role), whatever the grant."""
    return f"{principal}@{role}"


def is_shared(target: Target) -> bool:
    """The `shared` option: access is shared state the worker reference-counts across grants."""
    value = dict(target.options).get("shared", False)
    if not isinstance(value, bool):
        raise ConnectorError(
            f"{target.type} target {target.name}: option shared must be true or false"
        )
    return value


def account_for(access: Access, *, shared: bool) -> str:
    if shared:
        return shared_account(access.principal, access.role)
    return account_name(access.principal, access.grant_id)


# --- what is sent ------------------------------------------------------------------------------


def event_for(action: str, access: Access, *, target: str, account: str) -> dict[str, Any]:
    """The event for one grant. `id` is the same for every attempt at the same change, so a
    receiver can drop a repeated delivery; an extension's id names the new end because one
    grant may be extended more than once."""
    if action not in GRANT_ACTIONS:
        raise ValueError(f"unknown grant event {action!r}")
    ends_at = utc_text(access.ends_at)
    delivery = f"{action}:{access.grant_id}" + (f":{ends_at}" if action == "extend" else "")
    return {
        "event": action,
        "id": delivery,
        "grant_id": access.grant_id,
        "principal": access.principal,
        "account": account,
        "role": access.role,
        "target": target,
        "grants": _plain(access.grants),
        # Every request parameter is public (an SSH public key, say); none is a secret.
        "params": dict(access.params),
        "starts_at": utc_text(access.starts_at),
        "ends_at": ends_at,
    }


def removal_event(existing: ExistingAccess, *, target: str) -> dict[str, Any]:
    """Take away access a listing found that no grant explains (drift repair)."""
    return {
        "event": "remove",
        "id": f"remove:{existing.account}",
        "account": existing.account,
        "principal": existing.principal,
        "grant_id": existing.grant_id,
        "target": target,
        # It came from the receiver's own listing; handing it back tells it what was meant.
        "detail": json.loads(json.dumps(dict(existing.detail), default=str)),
    }


def listing_event(*, target: str, governed: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {
        "event": "list",
        "id": f"list:{target}",
        "target": target,
        "governed": [_plain(grants) for grants in governed],
    }


def check_event(*, target: str) -> dict[str, Any]:
    return {"event": "check", "id": f"check:{target}", "target": target}


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact, sorted-key UTF-8 JSON: the same event always gives the same bytes."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def utc_text(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, to the second or finer: 2026-01-05T09:00:00Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(grants: Mapping[str, Any]) -> dict[str, Any]:
    # The policy loader stores lists as tuples; JSON has only lists.
    return {k: list(v) if isinstance(v, tuple | list) else v for k, v in grants.items()}


# --- what comes back ---------------------------------------------------------------------------


def credentials_in(reply: object, where: str) -> dict[str, str] | None:
    """`{"credentials": {name: text}}` from a provision reply; None when it carries none."""
    if not isinstance(reply, dict) or reply.get("credentials") is None:
        return None
    found = reply["credentials"]
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in found.items()
    ):
        raise ConnectorError(f"{where}: credentials in the reply must map names to strings")
    return dict(found)


def access_in(reply: object, where: str) -> list[ExistingAccess]:
    """`{"access": [{"account", "principal", "grant_id", "detail"}, ...]}` from a listing."""
    entries = reply.get("access") if isinstance(reply, dict) else None
    if not isinstance(entries, list):
        raise ConnectorError(f'{where}: the listing must be a JSON object {{"access": [...]}}')
    found: list[ExistingAccess] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConnectorError(f"{where}: access[{i}] is not an object")
        account = entry.get("account")
        principal = entry.get("principal")
        grant_id = entry.get("grant_id")
        detail = entry.get("detail", {})
        if not isinstance(account, str) or not account:
            raise ConnectorError(f"{where}: access[{i}].account must be a non-empty string")
        if not isinstance(principal, str | None) or not isinstance(grant_id, str | None):
            raise ConnectorError(f"{where}: access[{i}] principal and grant_id: string or null")
        if not isinstance(detail, dict):
            raise ConnectorError(f"{where}: access[{i}].detail must be an object")
        found.append(ExistingAccess(principal or None, account, grant_id or None, detail))
    return found


# --- what a role may grant ---------------------------------------------------------------------


def grant_problems(grants: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A role's `grants` for a webhook or command target are passed on as they are, so they
    only have to be plain and safe to hand to another program: sensible keys, short text."""
    problems: list[tuple[str, str]] = []
    for key, value in grants.items():
        if not isinstance(key, str) or not _GRANTS_KEY.fullmatch(key):
            problems.append(
                (
                    str(key),
                    "a grants key is letters, digits, '_', '.' or '-' (at most 64, "
                    "not starting with a digit)",
                )
            )
            continue
        items = list(value) if isinstance(value, tuple | list) else [value]
        if isinstance(value, tuple | list) and len(items) > _MAX_ITEMS:
            problems.append((key, f"at most {_MAX_ITEMS} items"))
        for item in items:
            reason = _value_problem(item)
            if reason:
                problems.append((key, reason))
                break
    return problems


def _value_problem(value: object) -> str | None:
    if not isinstance(value, _SCALARS):
        return f"expected a string, integer, bool or null (or a list of them), got {value!r}"
    if isinstance(value, str):
        if len(value) > _MAX_TEXT:
            return f"text longer than {_MAX_TEXT} characters"
        if _CONTROL.search(value):
            return "text must not hold control characters"
    return None


class EventConnector:
    """What the webhook and command connectors share: per-target sharing, the grant checks,
    account names, the event for an access, and messages that never carry the secret."""

    kind = "event"  # how messages name the target type
    target: Target
    shared: bool
    _secret: str | None

    @staticmethod
    def per_grant_account_for(target: Target) -> bool:
        """`per_grant_account` of this target: False when its options say `shared: true`."""
        return not is_shared(target)

    @staticmethod
    def grant_problems(grants: dict[str, Any]) -> list[tuple[str, str]]:
        return grant_problems(grants)

    def account_of(self, access: Access) -> str:
        return account_for(access, shared=self.shared)

    def _event(self, action: str, access: Access) -> dict[str, Any]:
        account = self.account_of(access)
        return event_for(action, access, target=self.target.name, account=account)

    def _say(self, message: str) -> str:
        return f"{self.kind} target {self.target.name}: {message.strip()}"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text
