"""The LDAP connector against a real OpenLDAP slapd started for this module: group membership
read back with ldap3 and with the ldap-utils an administrator would use."""

from __future__ import annotations

import re
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitaccess.adapters.connectors.ldap import LdapConnector
from jitaccess.adapters.connectors.ldap_names import fold_dn
from jitaccess.adapters.connectors.registry import connector_types
from jitaccess.adapters.policy_yaml import load_policy_text
from jitaccess.domain.errors import ConnectorError, PolicyInvalid
from jitaccess.domain.policy import ConnectionRef, Target
from jitaccess.ports import Access
from support.slapd import ADMIN_DN, GROUPS, PEOPLE, Slapd, person_ldif, running_slapd

TEMPLATE = f"uid={{principal}},{PEOPLE}"
ALICE, BOB, CAROL = (f"uid={name},{PEOPLE}" for name in ("alice", "bob", "carol"))
OBRIEN = f"uid=o'brien\\+x,{PEOPLE}"
# An entry that an unescaped principal "eve,uid=alice" would name.
TRAP = f"uid=eve,{ALICE}"
READER, READER_PASSWORD = f"uid=reader,{PEOPLE}", uuid.uuid4().hex


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        for uid, dn in (("alice", ALICE), ("bob", BOB), ("carol", CAROL), ("o'brien+x", OBRIEN)):
            server.ldapadd(person_ldif(uid, dn))
        server.ldapadd(person_ldif("eve", TRAP))
        server.ldapadd(person_ldif("reader", READER) + f"userPassword: {READER_PASSWORD}\n")
        yield server


def target_for(slapd: Slapd, **options: Any) -> Target:
    settings = {"url": slapd.url, "bind_dn": ADMIN_DN, "user_dn_template": TEMPLATE, **options}
    return Target(name="it-ldap", type="ldap", options=tuple(settings.items()))


@pytest.fixture
def connect(slapd: Slapd) -> Iterator[Callable[..., LdapConnector]]:
    """Connectors made with these options (admin password unless told); closed afterwards."""
    made: list[LdapConnector] = []

    def make(password: str | None = None, **options: Any) -> LdapConnector:
        connector = LdapConnector(target_for(slapd, **options), password or slapd.admin_password)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


@pytest.fixture
def connector(connect: Callable[..., LdapConnector]) -> LdapConnector:
    return connect()


@pytest.fixture
def make_group(slapd: Slapd) -> Iterator[Callable[..., str]]:
    """New uniquely named groups (bob a standing member by default); deleted afterwards."""
    made: list[str] = []

    def make(object_class: str = "groupOfNames", members: Sequence[str] = (BOB,)) -> str:
        name = unique("jit-test")
        dn = f"cn={name},{GROUPS}"
        attribute = {"groupOfNames": "member", "groupOfUniqueNames": "uniqueMember"}.get(
            object_class, "memberUid"
        )
        extra = "gidNumber: 5000\n" if object_class == "posixGroup" else ""
        values = "".join(f"{attribute}: {member}\n" for member in members)
        slapd.ldapadd(f"dn: {dn}\nobjectClass: {object_class}\ncn: {name}\n{extra}{values}")
        made.append(dn)
        return dn

    yield make
    for dn in made:
        try:
            slapd.delete(dn)
        except RuntimeError as exc:
            if "No such object" not in str(exc):
                raise


def make_access(groups: Sequence[str], principal: str = "alice") -> Access:
    now = datetime.now(UTC).replace(microsecond=0)
    return Access(
        grant_id=str(uuid.uuid4()),
        principal=principal,
        role="directory/admins",
        target="it-ldap",
        grants={"ldap_groups": tuple(groups)},
        starts_at=now,
        ends_at=now + timedelta(hours=1),
    )


def folded(values: Sequence[str]) -> list[str]:
    return sorted(fold_dn(value) for value in values)


def test_provision_adds_the_principal_to_every_group_and_revoke_takes_it_out(
    slapd: Slapd, connector: LdapConnector, make_group: Callable[..., str]
) -> None:
    first, second = make_group(), make_group()
    access = make_access([first, second])

    assert connector.provision(access) is None

    for group in (first, second):
        assert folded(slapd.values(group, "member")) == folded([ALICE, BOB])
        assert folded(slapd.values_via_ldap3(group)) == folded([ALICE, BOB])
    connector.revoke(access)
    for group in (first, second):
        assert folded(slapd.values(group, "member")) == folded([BOB])
        assert folded(slapd.values_via_ldap3(group)) == folded([BOB])


def test_provision_and_revoke_can_be_repeated(
    slapd: Slapd, connector: LdapConnector, make_group: Callable[..., str]
) -> None:
    group = make_group()
    access = make_access([group])

    connector.provision(access)
    connector.provision(access)

    assert folded(slapd.values(group, "member")) == folded([ALICE, BOB])
    connector.revoke(access)
    connector.revoke(access)
    assert folded(slapd.values(group, "member")) == folded([BOB])
    connector.revoke(make_access([group], principal="carol"))  # never a member: still success


def test_revoke_succeeds_when_the_group_itself_is_gone(
    slapd: Slapd, connector: LdapConnector, make_group: Callable[..., str]
) -> None:
    group = make_group()
    access = make_access([group])
    connector.provision(access)
    slapd.delete(group)

    connector.revoke(access)


def test_a_member_added_by_hand_is_listed_and_remove_takes_it_away(
    slapd: Slapd, connector: LdapConnector, make_group: Callable[..., str]
) -> None:
    group = make_group()
    # Written the way a person might: another case, another escape style.
    slapd.ldapmodify(f"dn: {group}\nchangetype: modify\nadd: member\nmember: UID=Carol,{PEOPLE}\n")
    governed = [{"ldap_groups": (group,)}]

    listed = {entry.account: entry for entry in connector.list_access(governed)}

    carol = listed[connector.account_of(make_access([group], principal="carol"))]
    assert carol.principal is not None and carol.principal.lower() == "carol"
    assert carol.grant_id is None
    assert carol.detail["group"] == group
    assert fold_dn(carol.detail["member"]) == fold_dn(CAROL)
    assert listed[connector.account_of(make_access([group], principal="bob"))].principal == "bob"
    connector.remove(carol)
    connector.remove(carol)  # already gone: still success
    assert folded(slapd.values(group, "member")) == folded([BOB])
    assert [entry.principal for entry in connector.list_access(governed)] == ["bob"]


def test_list_access_names_one_account_per_group_and_account_of_names_the_first(
    connector: LdapConnector, make_group: Callable[..., str]
) -> None:
    first, second, ungoverned = make_group(), make_group(), make_group()
    access = make_access([first, second])
    connector.provision(access)

    listed = connector.list_access([access.grants, {"other_key": 1}])

    alice = {entry.account for entry in listed if entry.principal == "alice"}
    assert alice == set(connector.accounts_of(access))
    assert connector.account_of(access) == connector.accounts_of(access)[0]
    assert connector.account_of(access) == f"{fold_dn(ALICE)} in {fold_dn(first)}"
    assert not [entry for entry in listed if entry.detail["group"] == ungoverned]
    connector.revoke(access)
    assert {entry.principal for entry in connector.list_access([access.grants])} == {"bob"}


def test_a_principal_with_dn_special_characters_is_escaped_not_injected(
    slapd: Slapd, connector: LdapConnector, make_group: Callable[..., str]
) -> None:
    group = make_group()
    access = make_access([group], principal="o'brien+x")

    connector.provision(access)

    assert folded(slapd.values(group, "member")) == folded([OBRIEN, BOB])
    listed = connector.list_access([access.grants])
    assert {entry.principal for entry in listed} == {"o'brien+x", "bob"}
    connector.revoke(access)
    assert folded(slapd.values(group, "member")) == folded([BOB])

    # Unescaped, "eve,uid=alice" would name the existing entry TRAP.
    with pytest.raises(ConnectorError, match=r"no entry uid=eve\\,uid\\=alice,ou=people"):
        connector.provision(make_access([group], principal="eve,uid=alice"))
    assert folded(slapd.values(group, "member")) == folded([BOB])


def test_a_missing_group_or_person_is_refused_before_anything_changes(
    slapd: Slapd, connector: LdapConnector, make_group: Callable[..., str]
) -> None:
    group, absent = make_group(), f"cn={unique('absent')},{GROUPS}"

    with pytest.raises(ConnectorError, match=absent):
        connector.provision(make_access([group, absent]))
    with pytest.raises(ConnectorError, match="no entry uid=nobody"):
        connector.provision(make_access([group], principal="nobody"))

    assert folded(slapd.values(group, "member")) == folded([BOB])


def test_posix_groups_hold_the_principal_name_in_member_uid(
    slapd: Slapd, connect: Callable[..., LdapConnector], make_group: Callable[..., str]
) -> None:
    connector = connect(member_attribute="memberUid")
    group = make_group("posixGroup", members=["bob"])
    access = make_access([group])

    connector.provision(access)

    assert sorted(slapd.values(group, "memberUid")) == ["alice", "bob"]
    listed = {entry.account: entry.principal for entry in connector.list_access([access.grants])}
    assert listed == {f"alice in {fold_dn(group)}": "alice", f"bob in {fold_dn(group)}": "bob"}
    connector.revoke(access)
    assert slapd.values(group, "memberUid") == ["bob"]


def test_groups_of_unique_names_work_through_unique_member(
    slapd: Slapd, connect: Callable[..., LdapConnector], make_group: Callable[..., str]
) -> None:
    connector = connect(member_attribute="uniqueMember")
    group = make_group("groupOfUniqueNames", members=[f"{BOB}#'0101'B"])
    access = make_access([group])

    connector.provision(access)

    assert fold_dn(ALICE) in folded(slapd.values_via_ldap3(group, "uniqueMember"))
    principals = {entry.principal for entry in connector.list_access([access.grants])}
    assert principals == {"alice", "bob"}
    connector.revoke(access)
    assert fold_dn(ALICE) not in folded(slapd.values(group, "uniqueMember"))


def test_the_last_member_leaves_only_through_a_placeholder(
    slapd: Slapd, connect: Callable[..., LdapConnector], make_group: Callable[..., str]
) -> None:
    group = make_group(members=[ALICE])
    access = make_access([group])

    with pytest.raises(ConnectorError, match="placeholder_member"):
        connect().revoke(access)
    assert folded(slapd.values(group, "member")) == folded([ALICE])

    placeholder = f"cn=empty,{GROUPS}"
    connector = connect(placeholder_member=placeholder)
    connector.revoke(access)

    assert folded(slapd.values(group, "member")) == folded([placeholder])
    assert connector.list_access([access.grants]) == []  # the stand-in is nobody's access
    connector.provision(access)
    assert folded(slapd.values(group, "member")) == folded([ALICE, placeholder])


def test_worker_threads_can_add_and_remove_members_of_one_group_at_once(
    slapd: Slapd, connector: LdapConnector, make_group: Callable[..., str]
) -> None:
    group = make_group()
    names = [f"worker{n}" for n in range(8)]
    for name in names:
        slapd.ldapadd(person_ldif(name, f"uid={name},{PEOPLE}"))
    accesses = [make_access([group], principal=name) for name in names]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(connector.provision, accesses))
            assert len(slapd.values(group, "member")) == 9
            list(pool.map(connector.revoke, accesses))
        assert folded(slapd.values(group, "member")) == folded([BOB])
    finally:
        for name in names:
            slapd.delete(f"uid={name},{PEOPLE}")


def test_check_passes_and_names_a_missing_user_base(connect: Callable[..., LdapConnector]) -> None:
    connect().check()

    with pytest.raises(ConnectorError, match="ou=nobody,dc=example,dc=org does not exist"):
        connect(user_dn_template="uid={principal},ou=nobody,dc=example,dc=org").check()


def test_an_admin_that_may_only_read_passes_check_but_cannot_grant(
    slapd: Slapd, connect: Callable[..., LdapConnector], make_group: Callable[..., str]
) -> None:
    reader = connect(READER_PASSWORD, bind_dn=READER)
    group = make_group()

    reader.check()  # LDAP cannot say what one may write without trying
    with pytest.raises(ConnectorError, match="insufficientAccessRights"):
        reader.provision(make_access([group]))
    assert folded(slapd.values(group, "member")) == folded([BOB])


def test_a_wrong_password_fails_check_without_showing_any_password(
    slapd: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = unique("wrong-password")
    variable = unique("JIT_TEST_LDAP_PASSWORD").upper().replace("-", "_")
    monkeypatch.setenv(variable, wrong)
    target = replace(target_for(slapd), connection=ConnectionRef(env=variable))
    connector = LdapConnector.from_target(target)
    operations: list[Callable[[], object]] = [
        connector.check,
        lambda: connector.provision(make_access([GROUPS])),
    ]
    try:
        for operation in operations:
            with pytest.raises(ConnectorError, match="invalidCredentials") as caught:
                operation()
            shown = "".join(traceback.format_exception(caught.value))
            assert ADMIN_DN in shown
            assert wrong not in shown
            assert slapd.admin_password not in shown
    finally:
        connector.close()


def test_a_server_that_is_not_there_is_named(connect: Callable[..., LdapConnector]) -> None:
    with pytest.raises(ConnectorError, match=r"127\.0\.0\.1:1\b"):
        connect(url="ldap://127.0.0.1:1", timeout=2).check()


def test_ldaps_and_start_tls_verify_the_server_certificate(
    slapd: Slapd, connect: Callable[..., LdapConnector], make_group: Callable[..., str]
) -> None:
    connect(url=slapd.ldaps_url, ca_file=str(slapd.ca_file)).check()
    with pytest.raises(ConnectorError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(url=slapd.ldaps_url).check()

    over_start_tls = connect(start_tls=True, ca_file=str(slapd.ca_file))
    group = make_group()
    over_start_tls.provision(make_access([group]))
    assert folded(slapd.values(group, "member")) == folded([ALICE, BOB])
    with pytest.raises(ConnectorError, match=r"StartTLS|certificate|CERTIFICATE"):
        connect(start_tls=True).check()


@pytest.mark.parametrize(
    ("grants", "key"),
    [
        ({}, "ldap_groups"),
        ({"ldap_groups": ()}, "ldap_groups"),
        ({"ldap_groups": "cn=admins,ou=groups,dc=example,dc=org"}, "ldap_groups"),
        ({"ldap_groups": ("admins",)}, "ldap_groups[0]"),
        ({"ldap_groups": ("cn=a,ou=groups,dc=example,dc=org", "cn=a,,dc=x")}, "ldap_groups[1]"),
        ({"ldap_groups": ("cn=a+b,ou=groups,dc=example,dc=org",)}, "ldap_groups[0]"),
        ({"ldap_groups": ("cn=a\nb,ou=groups,dc=example,dc=org",)}, "ldap_groups[0]"),
        ({"ldap_groups": ("cn=A,dc=example,dc=org", "CN=a,DC=example,DC=org")}, "ldap_groups[1]"),
        ({"ldap_groups": (7,)}, "ldap_groups[0]"),
        ({"ldap_groups": ("cn=a,dc=example,dc=org",), "postgres_roles": ("x",)}, "postgres_roles"),
    ],
)
def test_grant_problems_refuse_what_is_not_a_list_of_group_dns(
    grants: dict[str, Any], key: str
) -> None:
    assert key in [found for found, _reason in LdapConnector.grant_problems(grants)]


def test_grant_problems_accept_group_dns() -> None:
    groups = ("cn=admins,ou=groups,dc=example,dc=org", "cn=o\\2Cdd\\+name,dc=example,dc=org")
    assert LdapConnector.grant_problems({"ldap_groups": groups}) == []


def test_the_policy_loader_reports_a_bad_group_dn_where_it_is_written() -> None:
    assert connector_types()["ldap"] is LdapConnector
    policy = """
targets:
  directory:
    type: ldap
    connection: {env: LDAP_ADMIN_PASSWORD}
roles:
  directory/admins:
    target: directory
    grants: {ldap_groups: ["cn=admins,ou=groups,dc=example,dc=org", "admins"]}
"""
    with pytest.raises(PolicyInvalid) as caught:
        load_policy_text(policy)
    assert "roles.directory/admins.grants.ldap_groups[1]" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"url": "http://127.0.0.1"}, "url must be"),
        ({"colour": "blue"}, "colour unknown"),
        ({"user_dn_template": "uid=alice,ou=people,dc=example,dc=org"}, "{principal} once"),
        ({"user_dn_template": "uid=x,ou={principal},dc=example,dc=org"}, "{principal} once"),
        ({"user_dn_template": "uid={principal}"}, "{principal} once"),
        ({"bind_dn": "admin"}, "bind_dn is not a valid DN"),
        ({"url": "ldaps://127.0.0.1", "start_tls": True}, "start_tls is for ldap://"),
        ({"member_attribute": "member uid"}, "member_attribute must be"),
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": 2.5}, "timeout must be"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, Any], complaint: str) -> None:
    defaults = {"url": "ldap://127.0.0.1", "bind_dn": ADMIN_DN, "user_dn_template": TEMPLATE}
    target = Target("it-ldap", "ldap", options=tuple({**defaults, **options}.items()))
    with pytest.raises(ConnectorError, match=f"it-ldap: option .*{re.escape(complaint)}"):
        LdapConnector(target, "secret")
