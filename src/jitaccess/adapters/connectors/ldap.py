"""LDAP connector: access is membership of directory groups (groupOfNames, groupOfUniqueNames or
posixGroup); provision adds the principal's entry to each granted group, revoke takes it out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from jitaccess.adapters.connectors.common import read_connection
from jitaccess.adapters.connectors.ldap_names import (
    CONTROL,
    dn_problem,
    fill_template,
    fold_dn,
    fold_member_dn,
    principal_in,
)
from jitaccess.adapters.connectors.ldap_session import (
    ConnectionPool,
    VerifiedTls,
    close_quietly,
    describe,
)
from jitaccess.adapters.connectors.ldap_settings import parse_settings
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target
from jitaccess.ports import Access, ExistingAccess

with warnings.catch_warnings():
    # ldap3 2.9.1, the latest, imports pyasn1 names that pyasn1 0.6 deprecated (tagMap, typeMap).
    warnings.filterwarnings("ignore", r"(tag|type)Map is deprecated", DeprecationWarning)
    import ldap3  # type: ignore[import-untyped]
    from ldap3.core.exceptions import (  # type: ignore[import-untyped]
        LDAPCommunicationError,
        LDAPException,
    )

log = logging.getLogger(__name__)
T = TypeVar("T")

GRANT_KEY = "ldap_groups"
GRANTS_SHAPE = 'an ldap role grants {ldap_groups: ["cn=NAME,ou=groups,dc=example,dc=org", ...]}'
# Result codes (RFC 4511) that mean "already as wanted" or "not there".
SUCCESS, COMPARE_FALSE, COMPARE_TRUE, NO_SUCH_ATTRIBUTE = 0, 5, 6, 16
VALUE_EXISTS, NO_SUCH_OBJECT, OBJECT_CLASS_VIOLATION = 20, 32, 65


class LdapConnector:
    """Grants access as group membership; see PRODUCT.md "Connectors".

    Options: `url` (ldap:// or ldaps://), `bind_dn`, `user_dn_template` (e.g.
    `uid={principal},ou=people,dc=example,dc=org`; the principal is escaped as a DN value),
    `member_attribute` (`member`, `uniqueMember`, or `memberUid` whose values are principal
    names), `start_tls`, `ca_file`, `timeout`, `placeholder_member` (a DN put in a group that
    would otherwise lose its last member, which groupOfNames forbids). `connection` is the
    bind password. A role grants `{ldap_groups: [DN, ...]}`; no credentials are issued.

    Membership is shared by every grant of a principal to a role, so the worker counts them
    and calls `revoke` only when the last ends. LDAP has no sessions to end: what a group
    membership grants is decided by whoever reads the group (a login, a sudo rule), so revoke
    is done once the value is confirmed gone from every group.

    `list_access` reports each member of each governed group as its own entry,
    `account = "<member DN> in <group DN>"` (both folded to one spelling). A role may grant
    several groups, but `account_of` can name one account: it names the first group's entry;
    `accounts_of` names them all.
    """

    per_grant_account = False

    def __init__(self, target: Target, password: str) -> None:
        self.target = target
        self._settings = parse_settings(target)
        self._password = password
        self._pool = ConnectionPool(self._connect)

    @classmethod
    def from_target(cls, target: Target) -> LdapConnector:
        return cls(target, read_connection(target))

    @staticmethod
    def grant_problems(grants: dict[str, Any]) -> list[tuple[str, str]]:
        problems = [(key, f"unknown key; {GRANTS_SHAPE}") for key in grants if key != GRANT_KEY]
        groups = grants.get(GRANT_KEY)
        if groups is None:
            return [*problems, (GRANT_KEY, f"is required; {GRANTS_SHAPE}")]
        if isinstance(groups, str) or not isinstance(groups, list | tuple) or not groups:
            return [*problems, (GRANT_KEY, "must be a non-empty list of group DNs")]
        seen: set[str] = set()
        for index, group in enumerate(groups):
            problem = dn_problem(group)
            if problem is None and fold_dn(group) in seen:
                problem = "names the same group twice"
            if problem:
                problems.append((f"{GRANT_KEY}[{index}]", problem))
            else:
                seen.add(fold_dn(group))
        return problems

    # --- the Connector protocol ------------------------------------------------------------

    def provision(self, access: Access) -> Mapping[str, str] | None:
        groups, value = self._groups(access), self._member_value(access.principal)
        self._run(lambda conn: self._provision(conn, access, groups, value))
        log.info("added %s to %s for grant %s", value, ", ".join(groups), access.grant_id)
        return None  # the grantee signs in as before; membership is the whole grant

    def revoke(self, access: Access) -> None:
        groups, value = self._groups(access), self._member_value(access.principal)
        self._run(lambda conn: self._revoke(conn, groups, value))
        log.info("removed %s from %s for grant %s", value, ", ".join(groups), access.grant_id)

    def extend(self, access: Access) -> None:
        """Group membership has no end date in LDAP; the worker's revoke is the end."""

    def list_access(self, governed: Sequence[Mapping[str, Any]] = ()) -> list[ExistingAccess]:
        groups: dict[str, str] = {}
        for grants in governed:
            listed = grants.get(GRANT_KEY)
            if isinstance(listed, list | tuple):
                for group in listed:
                    if dn_problem(group) is None:
                        groups.setdefault(fold_dn(group), group)
        members = self._run(lambda conn: [(g, self._members(conn, g)) for g in groups.values()])
        found = []
        for group, held in members:
            for member in held:
                account = self._account(member, group)
                detail = {"group": group, "member": member}
                found.append(ExistingAccess(self._principal_of(member), account, None, detail))
        return found

    def remove(self, existing: ExistingAccess) -> None:
        group, member = existing.detail.get("group"), existing.detail.get("member")
        if not isinstance(group, str) or not isinstance(member, str):
            raise ConnectorError(self._say(f"{existing.account}: no group and member to remove"))
        self._run(lambda conn: self._leave(conn, group, member))
        log.info("removed %s from %s (no grant explained it)", member, group)

    def account_of(self, access: Access) -> str:
        return self.accounts_of(access)[0]

    def accounts_of(self, access: Access) -> list[str]:
        """Every `account` list_access reports for this grant: one per group it grants."""
        value = self._member_value(access.principal)
        return [self._account(value, group) for group in self._groups(access)]

    def check(self) -> None:
        base = self._settings.user_base
        if not self._run(lambda conn: self._exists(conn, base)):
            raise ConnectorError(self._say(f"the user base {base} does not exist"))

    def close(self) -> None:
        self._pool.close()

    # --- steps ------------------------------------------------------------------------------

    def _provision(self, conn: Any, access: Access, groups: list[str], value: str) -> None:
        # Everything is looked at before anything changes, so a bad grant adds nothing.
        missing = [group for group in groups if not self._exists(conn, group)]
        if missing:
            raise ConnectorError(self._say(f"group(s) not found: {'; '.join(missing)}"))
        person = self._user_dn(access.principal)
        if not self._exists(conn, person):
            raise ConnectorError(self._say(f"no entry {person} for principal {access.principal}"))
        attribute = self._settings.member_attribute
        for group in groups:
            conn.modify(group, {attribute: [(ldap3.MODIFY_ADD, [value])]})
            if conn.result["result"] not in (SUCCESS, VALUE_EXISTS):
                raise self._failure(conn, f"adding {value} to {group}")
            if not self._holds(conn, group, value):
                raise ConnectorError(self._say(f"{value} is not in {group} after adding it"))

    def _revoke(self, conn: Any, groups: list[str], value: str) -> None:
        for group in groups:
            self._leave(conn, group, value)

    def _leave(self, conn: Any, group: str, value: str) -> None:
        attribute, placeholder = self._settings.member_attribute, self._settings.placeholder_member
        conn.modify(group, {attribute: [(ldap3.MODIFY_DELETE, [value])]})
        code = conn.result["result"]
        if code == OBJECT_CLASS_VIOLATION and placeholder:
            # The group may not be empty: swap in the placeholder in the same operation.
            change = [(ldap3.MODIFY_DELETE, [value]), (ldap3.MODIFY_ADD, [placeholder])]
            conn.modify(group, {attribute: change})
            code = conn.result["result"]
        if code == OBJECT_CLASS_VIOLATION:
            raise self._failure(
                conn,
                f"removing {value} from {group}, its last member (set option "
                "placeholder_member to a DN that may stand in for an empty group)",
            )
        if code not in (SUCCESS, NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT):
            raise self._failure(conn, f"removing {value} from {group}")
        if self._holds(conn, group, value):
            raise ConnectorError(self._say(f"{value} is still in {group} after removing it"))

    def _members(self, conn: Any, group: str) -> list[str]:
        attribute = self._settings.member_attribute
        conn.search(group, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[attribute])
        if conn.result["result"] == NO_SUCH_OBJECT:
            log.warning("ldap target %s: governed group %s does not exist", self.target.name, group)
            return []
        if conn.result["result"] != SUCCESS:
            raise self._failure(conn, f"reading the members of {group}")
        values: list[str] = []
        for entry in conn.response or []:
            for name, raw in (entry.get("raw_attributes") or {}).items():
                if name.split(";", 1)[0].lower() == attribute.lower():
                    values += [item.decode("utf-8", errors="replace") for item in raw]
        placeholder = self._settings.placeholder_member
        stand_in = fold_dn(placeholder) if placeholder else None
        return [value for value in values if self._fold_member(value) != stand_in]

    def _holds(self, conn: Any, group: str, value: str) -> bool:
        # compare uses the server's matching rule, so any spelling of the DN is recognised.
        conn.compare(group, self._settings.member_attribute, value)
        code = conn.result["result"]
        if code in (COMPARE_TRUE, COMPARE_FALSE, NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT):
            return bool(code == COMPARE_TRUE)
        raise self._failure(conn, f"checking whether {value} is in {group}")

    def _exists(self, conn: Any, dn: str) -> bool:
        conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["1.1"])
        if conn.result["result"] in (SUCCESS, NO_SUCH_OBJECT):
            return bool(conn.result["result"] == SUCCESS and conn.response)
        raise self._failure(conn, f"reading {dn}")

    # --- names ------------------------------------------------------------------------------

    def _groups(self, access: Access) -> list[str]:
        problems = self.grant_problems(dict(access.grants))
        if problems:
            # E.g. the role left the policy: without its groups a revoke cannot be confirmed.
            key, reason = problems[0]
            raise ConnectorError(self._say(f"grant {access.grant_id}: {key} {reason}"))
        return [str(group) for group in access.grants[GRANT_KEY]]

    def _user_dn(self, principal: str) -> str:
        if not principal or principal != principal.strip() or CONTROL.search(principal):
            raise ConnectorError(self._say(f"principal {principal!r} cannot name an LDAP entry"))
        return fill_template(self._settings.user_dn_template, principal)

    def _member_value(self, principal: str) -> str:
        user_dn = self._user_dn(principal)  # checks the name even where memberUid needs none
        return principal if self._settings.by_name else user_dn

    def _fold_member(self, value: str) -> str:
        return value if self._settings.by_name else fold_member_dn(value)

    def _account(self, member: str, group: str) -> str:
        return f"{self._fold_member(member)} in {fold_dn(group)}"

    def _principal_of(self, member: str) -> str | None:
        """The principal whose entry `member` names, read back through user_dn_template."""
        settings = self._settings
        if settings.by_name:
            return member
        return principal_in(
            member, settings.user_rdn_type, settings.user_rdn_value, settings.user_base
        )

    # --- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        settings = self._settings
        tls = VerifiedTls(settings.host, settings.ca_file)
        server = ldap3.Server(
            settings.host,
            port=settings.port,
            use_ssl=settings.use_ssl,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=settings.timeout,
        )
        conn = ldap3.Connection(
            server,
            user=settings.bind_dn,
            password=self._password,
            raise_exceptions=False,
            receive_timeout=settings.timeout,
            check_names=False,  # DNs are checked here; ldap3 would rewrite some of them
            auto_referrals=False,
        )
        try:
            conn.open()
            if settings.start_tls and not conn.start_tls():
                raise self._failure(conn, "StartTLS")
            if not conn.bind():
                raise self._failure(conn, f"binding as {settings.bind_dn}")
        except BaseException:
            close_quietly(conn)
            raise
        return conn

    def _run(self, work: Callable[[Any], T]) -> T:
        """Run `work` on a pooled connection; once more on a fresh one if the first one died."""
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except (LDAPCommunicationError, OSError) as exc:
                # Every step is idempotent, so repeating it after a lost connection is safe.
                if attempt == 2:
                    raise ConnectorError(self._say(self._scrub(describe(exc)))) from None
            except LDAPException as exc:
                raise ConnectorError(self._say(self._scrub(describe(exc)))) from None
        raise AssertionError("unreachable")

    def _failure(self, conn: Any, doing: str) -> ConnectorError:
        result = conn.result or {}
        said = f"{result.get('description', 'failed')} {result.get('message') or ''}".strip()
        return ConnectorError(self._say(f"{doing}: {self._scrub(said)}"))

    def _say(self, message: str) -> str:
        settings = self._settings
        return f"ldap target {self.target.name} ({settings.host}:{settings.port}): {message}"

    def _scrub(self, text: str) -> str:
        # ldap3 puts the password in repr(Connection); keep it out of anything we pass on.
        return text.replace(self._password, "***") if self._password else text
