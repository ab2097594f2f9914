"""Redis connector: an ACL user per grant holding the role's rules; revoke deletes the user and
kills its connections. ACL users have no expiry in Redis, so revoke is the only end."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from jitaccess.adapters.connectors.common import options, read_connection
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

log = logging.getLogger(__name__)

T = TypeVar("T")

GRANT_KEY = "redis_acl"
DEFAULT_PREFIX = "jit_"
OPTION_KEYS = ("host_for_clients", "user_prefix", "unmanaged_users")
# Killing a client is synchronous today, but threaded I/O may close it a moment later.
_CLIENTS_GONE_TIMEOUT = 2.0
_POLL_INTERVAL = 0.02
_PREFIX_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_PASSWORD_HASH = re.compile(r"#[0-9a-f]{64}")

# --- what a role may grant --------------------------------------------------------------------

_KEYWORDS = frozenset(
    {"allkeys", "allchannels", "allcommands", "nocommands", "resetkeys", "resetchannels"}
)
# Redis 7 categories, plus those the Redis 8 modules (search, JSON, time series, ...) add.
_CATEGORIES = frozenset(
    {
        *("keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap"),
        *("hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking"),
        *("dangerous", "connection", "transaction", "scripting", "all"),
        *("search", "json", "timeseries", "bloom", "cuckoo", "cms", "topk", "tdigest"),
    }
)
_KEY_RULE = re.compile(r"(%(R|W|RW|WR))?~[^\s\x00-\x1f\x7f]+")
_CHANNEL_RULE = re.compile(r"&[^\s\x00-\x1f\x7f]+")
_CATEGORY_RULE = re.compile(r"[+-]@(?P<category>[A-Za-z]+)")
_COMMAND_RULE = re.compile(r"[+-][A-Za-z][A-Za-z0-9_.-]*(\|[A-Za-z0-9_.:-]+)?")
# Tokens that touch passwords or the user's state: jitaccess sets those itself.
_SECRET_TOKENS = {
    ">": "sets a password",
    "<": "removes a password",
    "#": "sets a password hash",
    "!": "removes a password hash",
}
_STATE_TOKENS = {
    "nopass": "lets anyone log in without a password",
    "resetpass": "changes the user's passwords",
    "on": "changes whether the user is enabled",
    "off": "changes whether the user is enabled",
    "reset": "resets the whole user",
    "clearselectors": "changes the user's selectors",
}


def _token_problem(token: str) -> str | None:
    """Why one ACL rule is not allowed in a role, or None when it is."""
    if token[0] in _SECRET_TOKENS:
        # The rest of the token is a secret: name only its kind.
        return (
            f"rule '{token[0]}...' {_SECRET_TOKENS[token[0]]}; "
            "jitaccess issues each grant its own password"
        )
    if token.lower() in _STATE_TOKENS:
        return f"rule '{token}' {_STATE_TOKENS[token.lower()]}; jitaccess manages that itself"
    if token.startswith("("):
        return f"rule '{token}': selectors are not supported"
    if token.lower() in _KEYWORDS or _KEY_RULE.fullmatch(token) or _CHANNEL_RULE.fullmatch(token):
        return None
    category = _CATEGORY_RULE.fullmatch(token)
    if category:
        if category["category"].lower() in _CATEGORIES:
            return None
        return f"rule '{token}': unknown command category"
    if _COMMAND_RULE.fullmatch(token):
        return None
    return (
        f"rule '{token}' is not allowed; use key patterns (~pat, %R~pat, %W~pat, %RW~pat, "
        "allkeys), channel patterns (&pat, allchannels), command rules (+@cat, -@cat, +cmd, "
        "-cmd, +cmd|sub, allcommands, nocommands), resetkeys or resetchannels"
    )


def _rule_tokens(value: Any) -> list[str] | str:
    """The rules of `redis_acl` (a string, or a list of strings) as tokens; a reason if bad."""
    parts = [value] if isinstance(value, str) else value
    if not (isinstance(parts, list | tuple) and all(isinstance(part, str) for part in parts)):
        return "must be a string of ACL rules like '~cache:* +@read'"
    tokens = [token for part in parts for token in part.split()]
    if not tokens:
        return "must hold at least one ACL rule, like '~cache:* +@read'"
    return tokens


def _grant_problems(grants: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = [
        (key, f"unknown key; a redis role grants only {GRANT_KEY}")
        for key in grants
        if key != GRANT_KEY
    ]
    if GRANT_KEY not in grants:
        problems.append(("", f"a redis role needs grants: {{{GRANT_KEY}: '~pattern +@category'}}"))
        return problems
    tokens = _rule_tokens(grants[GRANT_KEY])
    if isinstance(tokens, str):
        return [*problems, (GRANT_KEY, tokens)]
    for token in tokens:
        reason = _token_problem(token)
        if reason:
            problems.append((GRANT_KEY, reason))
    return problems


# --- names ------------------------------------------------------------------------------------


def acl_user_name(principal: str, grant_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`jit_<principal>_<grant suffix>`: readable in CLIENT LIST, unique per grant."""
    person = re.sub(r"[^a-z0-9]+", "_", principal.lower()).strip("_")[:20].strip("_") or "x"
    suffix = re.sub(r"[^a-z0-9]", "", grant_id.lower())[-8:]
    if not suffix:
        raise ConnectorError(f"grant id {grant_id!r} has no letters or digits to name a user")
    return f"{prefix}{person}_{suffix}"


class RedisConnector:
    """Grants access as a per-grant ACL user; see PRODUCT.md "Connectors".

    Options: `host_for_clients` (the host put in credentials), `user_prefix` (default `jit_`),
    `unmanaged_users` (users drift detection leaves alone; default `[default]`; the admin user
    is always left alone). ACL users live on one server: replicas and cluster nodes each keep
    their own, and an `aclfile` is not rewritten (no ACL SAVE).
    """

    per_grant_account = True

    def __init__(
        self,
        target: Target,
        admin_url: str,
        *,
        host_for_clients: str | None = None,
        user_prefix: str = DEFAULT_PREFIX,
        unmanaged_users: Sequence[str] = ("default",),
    ) -> None:
        self.target = target
        self._host_for_clients = host_for_clients
        self._prefix = user_prefix
        self._managed_name = re.compile(
            re.escape(user_prefix) + r"(?P<principal>[a-z0-9_]+)_(?P<suffix>[a-z0-9]{1,8})"
        )
        self._unmanaged = frozenset(unmanaged_users)
        try:
            self._client = redis.Redis.from_url(
                admin_url,
                decode_responses=True,
                socket_timeout=10,
                socket_connect_timeout=10,
                # Every step is idempotent, so once more on a fresh connection is safe.
                retry=Retry(NoBackoff(), 1),
            )
        except (ValueError, TypeError):
            # The parser's message may quote the URL, password included.
            raise ConnectorError(
                self._say("the admin URL is not valid (redis://, rediss:// or unix://)")
            ) from None
        self._params: dict[str, Any] = dict(self._client.connection_pool.connection_kwargs)
        self._admin_password = str(self._params.get("password") or "")
        self._admin: str | None = None

    @classmethod
    def from_target(cls, target: Target) -> RedisConnector:
        admin_url = read_connection(target)
        settings = options(target)
        unknown = sorted(set(settings) - set(OPTION_KEYS))
        if unknown:
            raise ConnectorError(
                f"redis target {target.name}: unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(OPTION_KEYS)})"
            )
        host = settings.get("host_for_clients")
        prefix = settings.get("user_prefix", DEFAULT_PREFIX)
        unmanaged = settings.get("unmanaged_users", ("default",))
        if host is not None and not (isinstance(host, str) and host):
            raise ConnectorError(f"redis target {target.name}: host_for_clients must be a host")
        if not (isinstance(prefix, str) and _PREFIX_RULE.fullmatch(prefix)):
            raise ConnectorError(
                f"redis target {target.name}: user_prefix must be letters, digits, '_', '.', "
                "':' or '-'"
            )
        if not (isinstance(unmanaged, list | tuple) and all(isinstance(u, str) for u in unmanaged)):
            raise ConnectorError(
                f"redis target {target.name}: unmanaged_users must be a list of user names"
            )
        return cls(
            target,
            admin_url,
            host_for_clients=host,
            user_prefix=prefix,
            unmanaged_users=tuple(unmanaged),
        )

    @staticmethod
    def grant_problems(grants: dict[str, Any]) -> list[tuple[str, str]]:
        return _grant_problems(grants)

    # --- the Connector protocol ------------------------------------------------------------

    def provision(self, access: Access) -> dict[str, str]:
        name = self.account_of(access)
        problems = _grant_problems(access.grants)
        if problems:
            reasons = "; ".join(f"{key or 'grants'}: {reason}" for key, reason in problems)
            raise ConnectorError(self._say(f"grant {access.grant_id}: {reasons}"))
        tokens = _rule_tokens(access.grants[GRANT_KEY])
        assert isinstance(tokens, list)
        password = secrets.token_urlsafe(24)
        # Only the SHA-256 that Redis stores crosses the wire, never the password. `reset`
        # makes a retry after a crash start from nothing: a new password and the same rules.
        digest = hashlib.sha256(password.encode()).hexdigest()
        self._run(
            lambda client: _command(
                client, "ACL", "SETUSER", name, "reset", "on", f"#{digest}", *tokens
            )
        )
        log.info("provisioned redis user %s for grant %s", name, access.grant_id)
        return self._credentials(name, password)

    def revoke(self, access: Access) -> None:
        name = self.account_of(access)
        self._delete(name)
        log.info("revoked redis user %s of grant %s", name, access.grant_id)

    def extend(self, access: Access) -> None:
        """Redis ACL users have no end to move; only check the user is still there."""
        name = self.account_of(access)
        if self._run(lambda client: client.acl_getuser(name)) is None:
            raise ConnectorError(self._say(f"user {name} of grant {access.grant_id} is missing"))

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        """Users with the prefix, and every other enabled user not listed as unmanaged: any
        user made by hand is access no grant explains (`governed` adds nothing to that)."""
        lines, admin = self._run(
            lambda client: (_command(client, "ACL", "LIST"), self._whoami(client))
        )
        found = []
        for line in lines:
            _, name, *rules = str(line).split(" ")
            if name == admin or name in self._unmanaged:
                continue
            enabled = "on" in rules
            managed = name.startswith(self._prefix)
            if not (managed or enabled):
                continue
            shown = " ".join(rule for rule in rules if not _PASSWORD_HASH.fullmatch(rule))
            parsed = self._managed_name.fullmatch(name) if managed else None
            detail = {
                "rules": shown,
                "enabled": enabled,
                "managed": managed,
                "grant_suffix": parsed["suffix"] if parsed else None,
            }
            # The name keeps only a sanitised principal and the grant id's last characters;
            # Redis has nowhere to note more, so grants are matched by `account_of`.
            principal = parsed["principal"] if parsed else None
            found.append(ExistingAccess(principal, name, None, detail))
        return found

    def remove(self, existing: ExistingAccess) -> None:
        name = existing.account
        admin = self._run(self._whoami)
        if name == admin or name in self._unmanaged:
            raise ConnectorError(self._say(f"user {name} is unmanaged here and was not removed"))
        self._delete(name)
        log.info("removed redis user %s that no grant explains", name)

    def account_of(self, access: Access) -> str:
        return acl_user_name(access.principal, access.grant_id, self._prefix)

    def check(self) -> None:
        self._run(self._check)

    def close(self) -> None:
        self._client.close()

    # --- steps ------------------------------------------------------------------------------

    def _delete(self, name: str) -> None:
        """Delete `name` and end its connections; return only once both are confirmed."""

        def delete(client: redis.Redis) -> None:
            # One MULTI so nobody logs in between the steps: `off` stops new logins (and makes
            # a missing user exist for an instant, so the KILL and DELUSER after it never fail).
            pipe = client.pipeline(transaction=True)
            if name == "default":  # Redis cannot delete it; disable and empty it instead
                _command(pipe, "ACL", "SETUSER", name, "reset")
                _command(pipe, "CLIENT", "KILL", "USER", name)
            else:
                _command(pipe, "ACL", "SETUSER", name, "off")
                _command(pipe, "CLIENT", "KILL", "USER", name)
                _command(pipe, "ACL", "DELUSER", name)
            pipe.execute()

        self._run(delete)
        self._run(lambda client: self._confirm_gone(client, name))

    def _confirm_gone(self, client: redis.Redis, name: str) -> None:
        user = client.acl_getuser(name)
        if name == "default":
            # Fresh connections count as `default` until they log in, so only its state tells.
            if user is not None and user["enabled"]:
                raise ConnectorError(self._say("user default is still enabled after reset"))
            return
        if user is not None:
            raise ConnectorError(self._say(f"user {name} still exists after ACL DELUSER"))
        deadline = time.monotonic() + _CLIENTS_GONE_TIMEOUT
        while True:
            alive = [c for c in client.client_list() if c.get("user") == name]
            if not alive:
                return
            if time.monotonic() > deadline:
                raise ConnectorError(
                    self._say(f"{len(alive)} connection(s) of user {name} outlived CLIENT KILL")
                )
            for connection in alive:  # the user is gone, so only its client ids reach them
                with suppress(redis.ResponseError):  # "No such client": it just went
                    _command(client, "CLIENT", "KILL", "ID", connection["id"])
            time.sleep(_POLL_INTERVAL)

    def _check(self, client: redis.Redis) -> None:
        client.ping()
        admin = self._whoami(client)
        needed = (
            ("ACL", "SETUSER", f"{self._prefix}check"),
            ("ACL", "DELUSER", f"{self._prefix}check"),
            ("ACL", "GETUSER", f"{self._prefix}check"),
            ("ACL", "LIST"),
            ("CLIENT", "KILL", "USER", f"{self._prefix}check"),
            ("CLIENT", "LIST"),
        )
        try:
            answers = [_command(client, "ACL", "DRYRUN", admin, *command) for command in needed]
        except redis.ResponseError:
            # Before Redis 7, or without the right to dry-run: try the harmless ones for real.
            try:
                _command(client, "ACL", "LIST")
                client.client_list()
            except redis.exceptions.NoPermissionError as exc:
                raise ConnectorError(self._say(f"admin user {admin} lacks a right: {exc}")) from exc
            return
        for answer in answers:
            if answer != "OK":
                raise ConnectorError(self._say(f"admin user {admin} lacks a right: {answer}"))

    def _whoami(self, client: redis.Redis) -> str:
        if self._admin is None:
            self._admin = str(_command(client, "ACL", "WHOAMI"))
        return self._admin

    # --- plumbing ---------------------------------------------------------------------------

    def _credentials(self, name: str, password: str) -> dict[str, str]:
        db = str(self._params.get("db") or 0)
        user, secret = quote(name, safe=""), quote(password, safe="")
        socket_path = self._params.get("path")
        if socket_path and not self._host_for_clients:
            url = f"unix://{user}:{secret}@{socket_path}?db={db}"
            return dict(username=name, password=password, host=str(socket_path), port="", url=url)
        host = self._host_for_clients or str(self._params.get("host") or "localhost")
        port = str(self._params.get("port") or 6379)
        tls = issubclass(self._client.connection_pool.connection_class, redis.SSLConnection)
        netloc_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        url = f"{'rediss' if tls else 'redis'}://{user}:{secret}@{netloc_host}:{port}/{db}"
        return dict(username=name, password=password, host=host, port=port, url=url)

    def _run(self, work: Callable[[redis.Redis], T]) -> T:
        try:
            return work(self._client)
        except redis.AuthenticationError as exc:
            admin = self._params.get("username") or "default"
            raise ConnectorError(
                self._say(f"cannot log in as admin user {admin}: {self._scrub(str(exc))}")
            ) from exc
        except redis.RedisError as exc:
            raise ConnectorError(self._say(self._scrub(str(exc)))) from exc

    def _say(self, message: str) -> str:
        return f"redis target {self.target.name}: {message.strip()}"

    def _scrub(self, text: str) -> str:
        # Redis does not echo passwords today; this keeps it so if a message ever quotes a URL.
        return text.replace(self._admin_password, "***") if self._admin_password else text


def _command(client: redis.Redis | Pipeline, *args: str) -> Any:
    """One Redis command by name (redis-py leaves `execute_command` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
