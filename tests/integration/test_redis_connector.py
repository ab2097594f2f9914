"""The Redis connector against a real, private redis-server: ACL users per grant, what they may
reach, revoke ending live connections, drift found and removed, and the grants a role may hold."""

from __future__ import annotations

import socket
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import redis

from jitaccess.adapters.connectors.redis_acl import RedisConnector
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import ConnectionRef, Target
from jitaccess.ports import Access, ExistingAccess
from support.redis import acl_user_exists, clients_of, private_redis

TARGET = Target(name="it-cache", type="redis")
READ_CACHE = "~cache:* +@read"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def make_access(rules: Any = READ_CACHE, *, principal: str = "alice@example.com") -> Access:
    now = datetime.now(UTC).replace(microsecond=0)
    return Access(
        grant_id=str(uuid.uuid4()),
        principal=principal,
        role="it-cache/reader",
        target=TARGET.name,
        grants={"redis_acl": rules},
        starts_at=now,
        ends_at=now + timedelta(hours=1),
    )


def port_of(url: str) -> int:
    return int(urlsplit(url).port or 6379)


def password_of(url: str) -> str:
    return unquote(urlsplit(url).password or "")


def as_user(url: str, username: str, password: str) -> str:
    user, secret = quote(username, safe=""), quote(password, safe="")
    return f"redis://{user}:{secret}@127.0.0.1:{port_of(url)}/0"


def admin_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def refuses_login(username: str, password: str, url: str) -> bool:
    # from_url: the plain constructor retries a refused login ten times with backoff.
    client = redis.Redis.from_url(as_user(url, username, password))
    try:
        client.ping()
    except redis.AuthenticationError:
        return True
    finally:
        client.close()
    return False


class RawSession:
    """One logged-in socket speaking RESP: no pool or retry to hide that the server closed it."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port_of(url)), timeout=5)
        self._replies = self._socket.makefile("rb")
        assert self.call("AUTH", username, password) == b"+OK"
        assert self.call("GET", "cache:absent") == b"$-1"  # logged in, and the key may be read

    def call(self, *args: str) -> bytes:
        """Send one command; its one-line reply, or b"" when the server closed the connection."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        try:
            self._socket.sendall(request.encode())
            return self._replies.readline().rstrip(b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return b""

    def closed_by_server(self) -> bool:
        return self.call("GET", "cache:absent") == b""

    def close(self) -> None:
        self._replies.close()
        self._socket.close()


Sessions = Callable[[str, str, str], RawSession]


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    opened: list[RawSession] = []

    def open_session(url: str, username: str, password: str) -> RawSession:
        session = RawSession(url, username, password)
        opened.append(session)
        return session

    yield open_session
    for session in opened:
        session.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with private_redis() as url:
        yield url


@pytest.fixture
def connector(server: str) -> Iterator[RedisConnector]:
    made = RedisConnector(TARGET, server)
    yield made
    made.close()


@pytest.fixture
def issued(connector: RedisConnector) -> Iterator[list[Access]]:
    """Accesses a test provisioned; revoked afterwards whatever happened (revoke is idempotent)."""
    accesses: list[Access] = []
    yield accesses
    for access in accesses:
        connector.revoke(access)


@pytest.fixture
def hand_made(server: str) -> Iterator[Callable[..., str]]:
    """Makes ACL users by hand (as someone behind jitaccess's back); deleted afterwards."""
    made: list[str] = []

    def make(*rules: str) -> str:
        name = unique("mallory")
        with admin_client(server) as admin:
            admin.execute_command("ACL", "SETUSER", name, *rules)
        made.append(name)
        return name

    yield make
    with admin_client(server) as admin:
        for name in made:
            admin.acl_deluser(name)


Provision = Callable[..., tuple[Access, dict[str, str]]]


@pytest.fixture
def provision(connector: RedisConnector, issued: list[Access]) -> Provision:
    def provision_rules(
        rules: Any = READ_CACHE, principal: str = "alice@example.com"
    ) -> tuple[Access, dict[str, str]]:
        access = make_access(rules, principal=principal)
        issued.append(access)
        return access, connector.provision(access)

    return provision_rules


def test_issued_user_reads_granted_keys_and_is_refused_other_keys_and_commands(
    server: str, provision: Provision
) -> None:
    key, elsewhere = unique("cache:facts"), unique("secret:facts")
    with admin_client(server) as admin:
        admin.set(key, "42")
        admin.set(elsewhere, "no")
    _, credentials = provision()

    assert credentials["host"] == "127.0.0.1"
    assert credentials["port"] == str(port_of(server))
    assert credentials["username"].startswith("jit_alice_example_com_")
    assert credentials["url"] == (
        f"redis://{credentials['username']}:{credentials['password']}@127.0.0.1:{port_of(server)}/0"
    )
    with redis.Redis.from_url(credentials["url"], decode_responses=True) as grantee:
        grantee.execute_command("AUTH", credentials["username"], credentials["password"])
        assert grantee.get(key) == "42"
        with pytest.raises(redis.exceptions.NoPermissionError, match="keys"):
            grantee.get(elsewhere)
        with pytest.raises(redis.exceptions.NoPermissionError, match="set"):
            grantee.set(key, "changed")
        with pytest.raises(redis.exceptions.NoPermissionError):
            grantee.acl_list()
    assert refuses_login(credentials["username"], "not-the-password", server)
    with admin_client(server) as admin:
        admin.delete(key, elsewhere)


def test_revoke_kills_open_connections_and_refuses_new_logins(
    server: str, connector: RedisConnector, provision: Provision, sessions: Sessions
) -> None:
    access, credentials = provision()
    connections = [sessions(server, credentials["username"], credentials["password"]) for _ in "ab"]
    assert clients_of(server, credentials["username"]) == 2

    connector.revoke(access)

    assert all(conn.closed_by_server() for conn in connections)
    assert not acl_user_exists(server, credentials["username"])
    assert clients_of(server, credentials["username"]) == 0
    assert refuses_login(credentials["username"], credentials["password"], server)
    connector.revoke(access)  # again: nothing left, still success
    assert not acl_user_exists(server, credentials["username"])


def test_revoke_of_a_user_that_never_existed_succeeds_and_creates_nothing(
    server: str, connector: RedisConnector
) -> None:
    access = make_access()
    connector.revoke(access)
    connector.revoke(access)
    assert not acl_user_exists(server, connector.account_of(access))


def test_provision_twice_keeps_one_user_and_only_the_latest_password_works(
    server: str, connector: RedisConnector, provision: Provision
) -> None:
    access, first = provision()

    second = connector.provision(access)

    assert second["username"] == first["username"]
    assert second["password"] != first["password"]
    assert refuses_login(first["username"], first["password"], server)
    RawSession(server, second["username"], second["password"]).close()
    accounts = [found.account for found in connector.list_access()]
    assert accounts.count(first["username"]) == 1


def test_list_access_reports_the_user_under_account_of_and_forgets_it_after_revoke(
    connector: RedisConnector, provision: Provision
) -> None:
    access, credentials = provision("~cache:* %R~report:* +@read -keys", "Bob.Smith@example.com")

    found = {existing.account: existing for existing in connector.list_access()}

    mine = found[connector.account_of(access)]
    assert mine.account == credentials["username"]
    assert mine.principal == "bob_smith_example_co"  # sanitised and cut to 20 characters
    assert mine.grant_id is None  # Redis keeps only the name; grants match by account_of
    assert mine.detail["grant_suffix"] == access.grant_id.replace("-", "")[-8:]
    assert mine.detail["managed"] is True and mine.detail["enabled"] is True
    rules = mine.detail["rules"]
    assert "~cache:*" in rules and "%R~report:*" in rules and "+@read" in rules
    assert "-keys" in rules
    assert "#" not in rules  # the password hash is not shown
    assert "jitadmin" not in found and "default" not in found  # admin and unmanaged
    connector.revoke(access)
    assert credentials["username"] not in {e.account for e in connector.list_access()}


def test_hand_made_user_is_drift_and_remove_deletes_it_and_kills_its_client(
    server: str, connector: RedisConnector, hand_made: Callable[..., str], sessions: Sessions
) -> None:
    mallory = hand_made("on", ">pw-of-mallory", "~*", "+@all")
    dormant = hand_made("off", ">pw", "~*", "+@all")
    session = sessions(server, mallory, "pw-of-mallory")

    found = {existing.account: existing for existing in connector.list_access()}

    drift = found[mallory]
    assert (drift.principal, drift.grant_id) == (None, None)
    assert drift.detail["managed"] is False
    assert "~*" in drift.detail["rules"] and "+@all" in drift.detail["rules"]
    assert "#" not in drift.detail["rules"]
    assert dormant not in found  # a disabled hand-made user grants nothing

    connector.remove(drift)

    assert not acl_user_exists(server, mallory)
    assert session.closed_by_server()
    assert clients_of(server, mallory) == 0
    assert refuses_login(mallory, "pw-of-mallory", server)
    assert mallory not in {e.account for e in connector.list_access()}
    connector.remove(drift)  # again: already gone, still success


def test_unmanaged_users_and_the_admin_are_neither_listed_nor_removed(
    server: str, hand_made: Callable[..., str]
) -> None:
    monitoring = hand_made("on", ">pw", "+info")
    connector = RedisConnector(TARGET, server, unmanaged_users=("default", monitoring))
    try:
        accounts = {e.account for e in connector.list_access()}
        assert monitoring not in accounts and "jitadmin" not in accounts
        for name in (monitoring, "jitadmin"):
            with pytest.raises(ConnectorError, match=f"{name} is unmanaged"):
                connector.remove(ExistingAccess(principal=None, account=name))
        assert acl_user_exists(server, monitoring)
        assert acl_user_exists(server, "jitadmin")
    finally:
        connector.close()


def test_a_managed_default_user_found_enabled_is_disabled_and_emptied_not_deleted(
    server: str, sessions: Sessions
) -> None:
    connector = RedisConnector(TARGET, server, unmanaged_users=())
    with admin_client(server) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "on", ">open-sesame", "~*", "+@all")
    try:
        session = sessions(server, "default", "open-sesame")
        drift = {e.account: e for e in connector.list_access()}["default"]
        assert "+@all" in drift.detail["rules"]

        connector.remove(drift)

        assert session.closed_by_server()
        assert "default" not in {e.account for e in connector.list_access()}
        assert refuses_login("default", "open-sesame", server)
    finally:
        connector.close()
        with admin_client(server) as admin:
            admin.execute_command("ACL", "SETUSER", "default", "reset")


def test_a_requirepass_server_is_administered_as_default_which_stays_unlisted() -> None:
    with private_redis(admin_user=None) as url:
        assert url.startswith("redis://:")
        connector = RedisConnector(TARGET, url)
        try:
            connector.check()
            access = make_access()
            credentials = connector.provision(access)
            assert {e.account for e in connector.list_access()} == {credentials["username"]}
            RawSession(url, credentials["username"], credentials["password"]).close()
            connector.revoke(access)
            assert connector.list_access() == []
        finally:
            connector.close()


def test_rules_redis_itself_refuses_fail_provision_by_name_and_create_nothing(
    server: str, connector: RedisConnector
) -> None:
    access = make_access("~cache:* +nosuchcommand")
    with pytest.raises(ConnectorError, match=r"it-cache.*nosuchcommand") as caught:
        connector.provision(access)
    assert "#" not in str(caught.value)
    assert not acl_user_exists(server, connector.account_of(access))


def test_provision_refuses_grants_the_policy_would_refuse(
    server: str, connector: RedisConnector
) -> None:
    access = make_access("~cache:* nopass")
    with pytest.raises(ConnectorError, match="nopass"):
        connector.provision(access)
    assert not acl_user_exists(server, connector.account_of(access))


def test_extend_leaves_the_user_as_it_is_and_a_missing_user_cannot_be_extended(
    server: str, connector: RedisConnector, provision: Provision
) -> None:
    access, credentials = provision()
    later = replace(access, ends_at=access.ends_at + timedelta(hours=2))

    connector.extend(later)

    RawSession(server, credentials["username"], credentials["password"]).close()
    with pytest.raises(ConnectorError, match="missing"):
        connector.extend(make_access())


def test_check_passes_for_the_admin_and_fails_without_acl_rights(
    server: str, connector: RedisConnector, hand_made: Callable[..., str]
) -> None:
    connector.check()
    reader = hand_made("on", ">reader-pw", "~*", "+@read", "+ping", "+acl|whoami")
    weak = RedisConnector(TARGET, as_user(server, reader, "reader-pw"))
    try:
        with pytest.raises(ConnectorError, match=reader):
            weak.check()
    finally:
        weak.close()


def test_wrong_admin_password_fails_check_and_provision_without_showing_a_password(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_password = password_of(server)
    wrong_password = unique("wrong-password")
    monkeypatch.setenv("JIT_TEST_WRONG_REDIS", as_user(server, "jitadmin", wrong_password))
    connector = RedisConnector.from_target(
        replace(TARGET, connection=ConnectionRef(env="JIT_TEST_WRONG_REDIS"))
    )
    operations: Sequence[Callable[[], object]] = (
        connector.check,
        lambda: connector.provision(make_access()),
        lambda: connector.revoke(make_access()),
        connector.list_access,
    )
    try:
        for operation in operations:
            with pytest.raises(ConnectorError) as caught:
                operation()
            shown = "".join(traceback.format_exception(caught.value))
            assert "it-cache" in str(caught.value)
            assert "invalid username-password pair" in str(caught.value)
            assert wrong_password not in shown
            assert real_password not in shown
    finally:
        connector.close()


def test_unreachable_server_fails_check_naming_the_target() -> None:
    connector = RedisConnector(TARGET, "redis://jitadmin:hunter2-secret@127.0.0.1:1/0")
    try:
        with pytest.raises(ConnectorError, match="it-cache") as caught:
            connector.check()
        assert "hunter2-secret" not in "".join(traceback.format_exception(caught.value))
    finally:
        connector.close()


def test_admin_url_comes_from_env_or_file_and_problems_name_the_reference_not_the_value(
    server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    variable = unique("JIT_TEST_REDIS_URL").upper()
    monkeypatch.delenv(variable, raising=False)
    from_env = replace(TARGET, connection=ConnectionRef(env=variable))
    with pytest.raises(ConnectorError, match=variable):
        RedisConnector.from_target(from_env)

    monkeypatch.setenv(variable, "http://admin:hunter2-secret@127.0.0.1:6379/0")
    with pytest.raises(ConnectorError) as caught:
        RedisConnector.from_target(from_env)
    assert "hunter2-secret" not in "".join(traceback.format_exception(caught.value))

    path = tmp_path / "admin.url"
    path.write_text(server + "\n")
    from_file = RedisConnector.from_target(
        replace(TARGET, connection=ConnectionRef(file=str(path)))
    )
    try:
        from_file.check()
    finally:
        from_file.close()


def test_options_are_checked_and_the_prefix_and_client_host_are_used(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JIT_TEST_REDIS_URL", server)
    base = replace(TARGET, connection=ConnectionRef(env="JIT_TEST_REDIS_URL"))
    for bad in (
        {"unmanaged_user": ["x"]},
        {"unmanaged_users": "default"},
        {"user_prefix": "has space"},
        {"host_for_clients": 5},
    ):
        with pytest.raises(ConnectorError, match="it-cache"):
            RedisConnector.from_target(replace(base, options=tuple(bad.items())))
    settings = {"user_prefix": "temp-", "host_for_clients": "cache.example.org"}
    connector = RedisConnector.from_target(replace(base, options=tuple(settings.items())))
    access = make_access()
    try:
        credentials = connector.provision(access)
        assert credentials["username"].startswith("temp-alice_example_com_")
        assert credentials["host"] == "cache.example.org"
        assert "@cache.example.org:" in credentials["url"]
        found = {e.account: e for e in connector.list_access()}
        assert found[credentials["username"]].principal == "alice_example_com"
    finally:
        connector.revoke(access)
        connector.close()


# --- what a role may grant (no server needed) -------------------------------------------------


@pytest.mark.parametrize(
    "rules",
    [
        "~cache:* +@read",
        "%R~report:* %W~queue:* %RW~both:* %WR~again:* -@dangerous",
        "allkeys allchannels allcommands",
        "resetkeys ~a:* resetchannels &news:* nocommands +get +config|get -config|set",
        ("~cache:*", "+@read +ping"),
        "+JSON.GET ~doc:* +@json",
    ],
)
def test_grant_problems_accept_key_channel_and_command_rules(rules: Any) -> None:
    assert RedisConnector.grant_problems({"redis_acl": rules}) == []


@pytest.mark.parametrize(
    ("rules", "named"),
    [
        ("~cache:* >secret", "'>...' sets a password"),
        ("<secret +@read", "'<...' removes a password"),
        ("#" + "a" * 64, "'#...' sets a password hash"),
        ("!" + "a" * 64, "'!...' removes a password hash"),
        ("~* nopass", "'nopass'"),
        ("resetpass +@read", "'resetpass'"),
        ("on ~* +@all", "'on'"),
        ("off", "'off'"),
        ("reset ~* +@read", "'reset'"),
        ("(~x +get)", "selectors"),
        ("~cache:* +@readd", "'+@readd': unknown command category"),
        ("~cache:* sanitize-payload", "'sanitize-payload' is not allowed"),
        ("~ +@read", "'~' is not allowed"),
        ("+@read frobnicate", "'frobnicate' is not allowed"),
    ],
)
def test_grant_problems_refuse_passwords_state_and_unknown_rules_by_name(
    rules: str, named: str
) -> None:
    problems = RedisConnector.grant_problems({"redis_acl": rules})
    assert problems and {key for key, _ in problems} == {"redis_acl"}
    reasons = " | ".join(reason for _, reason in problems)
    assert named in reasons
    assert "secret" not in reasons and "a" * 64 not in reasons


@pytest.mark.parametrize(
    ("grants", "key", "reason"),
    [
        ({}, "", "needs grants"),
        ({"redis_acl": ""}, "redis_acl", "at least one ACL rule"),
        ({"redis_acl": 5}, "redis_acl", "must be a string"),
        ({"redis_acl": ("~a", 5)}, "redis_acl", "must be a string"),
        ({"redis_acl": "+@read", "redis_db": 2}, "redis_db", "unknown key"),
    ],
)
def test_grant_problems_refuse_missing_empty_mistyped_and_unknown_keys(
    grants: dict[str, Any], key: str, reason: str
) -> None:
    problems = RedisConnector.grant_problems(grants)
    assert [found for found, _ in problems] == [key]
    assert reason in problems[0][1]


def test_a_pooled_connection_killed_by_the_server_is_replaced(
    server: str, connector: RedisConnector
) -> None:
    connector.check()
    with admin_client(server) as admin:
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1

    connector.check()


def test_worker_threads_can_provision_and_revoke_at_once(
    server: str, connector: RedisConnector
) -> None:
    accesses = [make_access(principal=f"user{n}") for n in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        issued = list(pool.map(connector.provision, accesses))
        for credentials in issued:
            RawSession(server, credentials["username"], credentials["password"]).close()
        list(pool.map(connector.revoke, accesses))
    assert not [c for c in issued if acl_user_exists(server, c["username"])]
