"""The options of an ldap target, checked once into `Settings`: where and how to connect, and
how a principal names its entry and its group membership."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

from jitaccess.adapters.connectors.ldap_names import PLACEHOLDER, dn_problem
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import Target

with warnings.catch_warnings():
    # ldap3 2.9.1, the latest, imports pyasn1 names that pyasn1 0.6 deprecated (tagMap, typeMap).
    warnings.filterwarnings("ignore", r"(tag|type)Map is deprecated", DeprecationWarning)
    from ldap3.utils.dn import parse_dn  # type: ignore[import-untyped]

OPTIONS: tuple[str, ...] = (
    "url",
    "bind_dn",
    "user_dn_template",
    "member_attribute",
    "start_tls",
    "ca_file",
)
OPTIONS += ("timeout", "placeholder_member")
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    use_ssl: bool
    bind_dn: str
    user_dn_template: str
    user_rdn_type: str  # of the template's first RDN, the one holding {principal}
    user_rdn_value: str  # as written, escapes and {principal} included
    user_base: str  # the template without its first RDN
    member_attribute: str
    start_tls: bool
    ca_file: str | None
    timeout: int
    placeholder_member: str | None

    @property
    def by_name(self) -> bool:
        """posixGroup's memberUid holds user names, not DNs."""
        return self.member_attribute.lower() == "memberuid"


def parse_settings(target: Target) -> Settings:
    options = dict(target.options)

    def bad(message: str) -> ConnectorError:
        return ConnectorError(f"ldap target {target.name}: option {message}")

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise bad(f"{', '.join(unknown)} unknown (known: {', '.join(OPTIONS)})")
    url = urlsplit(str(options.get("url") or ""))
    if url.scheme not in ("ldap", "ldaps") or not url.hostname or url.path not in ("", "/"):
        raise bad("url must be ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
    try:
        port = url.port or (636 if url.scheme == "ldaps" else 389)
    except ValueError:
        raise bad("url has an invalid port") from None
    for name in ("bind_dn", "user_dn_template", "placeholder_member"):
        if name in options or name != "placeholder_member":
            problem = dn_problem(options.get(name))
            if problem:
                raise bad(f"{name} {problem}")
    template = str(options["user_dn_template"])
    (kind, value, separator), *base = parse_dn(template)
    if template.count(PLACEHOLDER) != 1 or PLACEHOLDER not in value or separator != ",":
        raise bad(
            "user_dn_template must hold {principal} once, in the value of its first RDN, "
            "like uid={principal},ou=people,dc=example,dc=org"
        )
    attribute = str(options.get("member_attribute", "member"))
    if not _ATTRIBUTE.fullmatch(attribute):
        raise bad("member_attribute must be an attribute name like member or uniqueMember")
    start_tls, timeout = options.get("start_tls", False), options.get("timeout", 10)
    if not isinstance(start_tls, bool):
        raise bad("start_tls must be true or false")
    if start_tls and url.scheme == "ldaps":
        raise bad("start_tls is for ldap:// URLs; ldaps:// is TLS already")
    # ldap3 packs the receive timeout into a C long: whole seconds only.
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise bad("timeout must be a positive whole number of seconds")
    ca_file, placeholder = options.get("ca_file"), options.get("placeholder_member")
    return Settings(
        host=url.hostname,
        port=port,
        use_ssl=url.scheme == "ldaps",
        bind_dn=str(options["bind_dn"]),
        user_dn_template=template,
        user_rdn_type=str(kind),
        user_rdn_value=str(value),
        user_base="".join(f"{k}={v}{s}" for k, v, s in base),
        member_attribute=attribute,
        start_tls=start_tls,
        ca_file=str(ca_file) if ca_file else None,
        timeout=timeout,
        placeholder_member=str(placeholder) if placeholder else None,
    )
