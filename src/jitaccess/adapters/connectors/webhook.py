"""Webhook connector: every change is a signed HTTP POST of the shared JSON event to a receiver
that makes the access real (anything jitaccess has no connector for).

Signing follows the Stripe/GitHub pattern: `X-Jitaccess-Signature: sha256=<hex>` is the
HMAC-SHA256, keyed with the target's secret, of `<X-Jitaccess-Timestamp> + "." + <body>`.
Receivers check it with `verify_signature` (or its few lines in their own language) and refuse
timestamps more than five minutes away, so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from jitaccess.adapters.connectors import events
from jitaccess.adapters.connectors.common import options, read_connection
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

log = logging.getLogger(__name__)

SIGNATURE_PREFIX = "sha256="
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0  # a call longer than the worker's lease (30 s) may be claimed twice
REPLAY_TOLERANCE = 300
_OPTIONS = frozenset({"url", "timeout", "headers", "list_url", "shared", "allow_http"})
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# Static headers live in the policy file, in the clear: nothing that authenticates.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "authorization", "proxy-authorization", "cookie"}
)
_SECRET_LOOKING = re.compile(r"auth|token|secret|key|password|session|cookie", re.IGNORECASE)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Jitaccess-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    header: str,
    now: float,
    tolerance: float = REPLAY_TOLERANCE,
) -> bool:
    """For receivers: True when `header` signs `body` at `timestamp` with `secret` and the
    timestamp is within `tolerance` seconds of `now` (either way: clocks drift)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, str(sent), body), header.strip())


class WebhookConnector(events.EventConnector):
    """Delivers provision/revoke/extend/remove events; see docs/connectors.md."""

    # Per grant unless the target sets `shared: true`; see per_grant_account_for.
    per_grant_account = True
    kind = "webhook"
    _secret: str  # always set: a webhook is signed

    def __init__(self, target: Target, secret: str) -> None:
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
        allow_http = opts.get("allow_http", False)
        if not isinstance(allow_http, bool):
            raise ConnectorError(self._say("option allow_http must be true or false"))
        if "url" not in opts:
            raise ConnectorError(self._say("option url is required"))
        self.url = self._endpoint(opts["url"], "url", allow_http)
        self.list_url = (
            self._endpoint(opts["list_url"], "list_url", allow_http)
            if opts.get("list_url") is not None
            else None
        )
        # Without a listing, drift detection skips this target rather than call all its
        # grants missing.
        self.can_list = self.list_url is not None
        self.timeout = _timeout(opts.get("timeout", DEFAULT_TIMEOUT), self._say)
        self.headers = _static_headers(opts.get("headers"), self._say)
        self.shared = events.is_shared(target)
        self.per_grant_account = not self.shared
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,  # a signed event goes where the policy says, nowhere else
            headers={"User-Agent": "jitaccess-webhook"},
        )

    @classmethod
    def from_target(cls, target: Target) -> WebhookConnector:
        return cls(target, read_connection(target))

    # --- the Connector protocol ------------------------------------------------------------

    def provision(self, access: Access) -> dict[str, str] | None:
        reply = self._deliver(self._event("provision", access))
        where = self._say(f"provision of grant {access.grant_id}")
        credentials = events.credentials_in(reply, where)
        log.info("webhook %s provisioned grant %s", self.target.name, access.grant_id)
        return credentials

    def revoke(self, access: Access) -> None:
        # A 2xx answer is the receiver's word that the access is gone.
        self._deliver(self._event("revoke", access))
        log.info("webhook %s revoked grant %s", self.target.name, access.grant_id)

    def extend(self, access: Access) -> None:
        self._deliver(self._event("extend", access))

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        """What the receiver at `list_url` reports; without one, nothing can be listed."""
        if self.list_url is None:
            return []
        timestamp = str(int(time.time()))
        headers = {
            **self.headers,
            "Accept": "application/json",
            "X-Jitaccess-Event": "list",
            "X-Jitaccess-Timestamp": timestamp,
            "X-Jitaccess-Signature": sign(self._secret, timestamp, b""),
        }
        response = self._call("list", "GET", self.list_url, headers=headers)
        where = self._say("list")
        try:
            reply = json.loads(response.content)
        except ValueError:
            raise ConnectorError(f"{where}: {self.list_url} did not answer with JSON") from None
        return events.access_in(reply, where)

    def remove(self, existing: ExistingAccess) -> None:
        self._deliver(events.removal_event(existing, target=self.target.name))
        log.info("webhook %s removed %s", self.target.name, existing.account)

    def check(self) -> None:
        """The receiver answers 2xx to a signed `check` event when it can do its work."""
        self._deliver(events.check_event(target=self.target.name))

    def close(self) -> None:
        self._client.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _deliver(self, event: Mapping[str, Any]) -> object:
        """POST one event; the reply's JSON (None when it has none)."""
        body = events.encode(event)
        timestamp = str(int(time.time()))
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "X-Jitaccess-Event": str(event["event"]),
            "X-Jitaccess-Delivery": str(event["id"]),
            "X-Jitaccess-Timestamp": timestamp,
            "X-Jitaccess-Signature": sign(self._secret, timestamp, body),
        }
        what = str(event["event"])
        if event.get("grant_id") and what in events.GRANT_ACTIONS:
            what = f"{what} of grant {event['grant_id']}"
        response = self._call(what, "POST", self.url, headers=headers, content=body)
        if not response.content.strip():
            return None
        try:
            return json.loads(response.content)
        except ValueError:
            return None  # a plain "ok" is fine; only a JSON reply can carry credentials

    def _call(
        self,
        what: str,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        content: bytes | None = None,
    ) -> httpx.Response:
        try:
            response = self._client.request(method, url, headers=headers, content=content)
        except httpx.TimeoutException:
            raise ConnectorError(
                self._say(f"{what} failed: {url} did not answer within {self.timeout:g} s")
            ) from None
        except httpx.HTTPError as exc:
            reason = self._scrub(str(exc)) or type(exc).__name__
            message = f"{what} failed: cannot reach {url}: {reason}"
            raise ConnectorError(self._say(message)) from None
        if response.status_code == 202:
            # Accepted is a promise, not a confirmation: a revoke must be done before we stop.
            raise ConnectorError(
                self._say(f"{what} not confirmed: {url} answered 202 Accepted, not done")
            )
        if not response.is_success:
            raise ConnectorError(
                self._say(
                    f"{what} failed: {url} answered HTTP {response.status_code} "
                    f"{response.reason_phrase}{self._excerpt(response)}"
                )
            )
        return response

    def _excerpt(self, response: httpx.Response) -> str:
        lines = [line for line in response.text.strip().splitlines() if line.strip()]
        if not lines:
            return ""
        first = self._scrub(lines[0].strip())
        return f": {first[:200]}{'…' if len(first) > 200 else ''}"

    def _endpoint(self, value: object, name: str, allow_http: bool) -> str:
        if not isinstance(value, str) or not value:
            raise ConnectorError(self._say(f"option {name} must be an http(s) URL"))
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ConnectorError(self._say(f"option {name} is not a valid URL")) from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConnectorError(self._say(f"option {name} must be an http(s) URL with a host"))
        if url.userinfo:
            raise ConnectorError(self._say(f"option {name} must not carry a user or password"))
        if url.scheme == "http" and not allow_http and not _is_loopback(url.host):
            raise ConnectorError(
                self._say(
                    f"option {name} is plain http to {url.host}: credentials would travel "
                    "in the clear; use https (or set allow_http: true)"
                )
            )
        return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _timeout(value: object, say: Callable[[str], str]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConnectorError(say("option timeout must be a number of seconds"))
    if not 0 < value <= MAX_TIMEOUT:
        raise ConnectorError(say(f"option timeout must be more than 0 and at most {MAX_TIMEOUT:g}"))
    return float(value)


def _static_headers(value: object, say: Callable[[str], str]) -> dict[str, str]:
    """`headers: ["X-Team: payments", ...]` (policy options hold lists, not mappings)."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, tuple | list) and all(isinstance(item, str) for item in value):
        pairs = []
        for item in value:
            name, colon, text = item.partition(":")
            if not colon:
                raise ConnectorError(say(f"option headers: {item!r} is not 'Name: value'"))
            pairs.append((name.strip(), text.strip()))
    else:
        raise ConnectorError(say("option headers must be a list of 'Name: value' strings"))
    headers: dict[str, str] = {}
    for name, text in pairs:
        if not _HEADER_NAME.fullmatch(name):
            raise ConnectorError(say(f"option headers: {name!r} is not a header name"))
        lowered = name.lower()
        if lowered in _RESERVED_HEADERS or lowered.startswith("x-jitaccess-"):
            raise ConnectorError(say(f"option headers: {name} is set by jitaccess or not allowed"))
        if _SECRET_LOOKING.search(name):
            raise ConnectorError(
                say(
                    f"option headers: {name} looks like a credential; the signature "
                    "authenticates jitaccess, and secrets never go in the policy"
                )
            )
        if any(c in text for c in "\r\n\0"):
            raise ConnectorError(say(f"option headers: the value of {name} has a line break"))
        headers[name] = text
    return headers
