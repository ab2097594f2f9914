"""Distinguished names for the LDAP connector: checked (RFC 4514), folded to one spelling for
comparing, escaped into the user DN template, and read back through it."""

from __future__ import annotations

import re
import warnings

with warnings.catch_warnings():
    # ldap3 2.9.1, the latest, imports pyasn1 names that pyasn1 0.6 deprecated (tagMap, typeMap).
    warnings.filterwarnings("ignore", r"(tag|type)Map is deprecated", DeprecationWarning)
    from ldap3.core.exceptions import LDAPInvalidDnError  # type: ignore[import-untyped]
    from ldap3.utils.dn import escape_rdn, parse_dn  # type: ignore[import-untyped]

PLACEHOLDER = "{principal}"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNIQUE_ID = re.compile(r"#'[01]*'B$")  # uniqueMember may end in an optional bit-string UID


def dn_problem(value: object) -> str | None:
    """Why `value` is not a DN we accept (RFC 4514, no control characters), or None."""
    if not isinstance(value, str) or not value:
        return "must be a group DN like cn=admins,ou=groups,dc=example,dc=org"
    if CONTROL.search(value):
        return "must not contain control characters"
    try:
        parse_dn(value)
    except LDAPInvalidDnError as exc:
        return f"is not a valid DN ({exc}); write it as in RFC 4514, without spaces around , ="
    return None


def _unescape(value: str) -> str:
    """An RFC 4514 attribute value without its escapes (`\\,` and `\\2C` both become `,`)."""
    if value.startswith("#"):  # BER-encoded value: compared as written
        return value
    out, index = bytearray(), 0
    while index < len(value):
        char = value[index]
        if char != "\\":
            out += char.encode()
            index += 1
        elif re.fullmatch(r"[0-9A-Fa-f]{2}", value[index + 1 : index + 3]):
            out.append(int(value[index + 1 : index + 3], 16))
            index += 3
        else:
            out += value[index + 1 : index + 2].encode()
            index += 2
    return out.decode("utf-8", errors="replace")


def _rdns(dn: str) -> list[list[tuple[str, str]]]:
    """The DN's RDNs, each a list of (lower-case type, unescaped value)."""
    rdns: list[list[tuple[str, str]]] = [[]]
    for kind, value, separator in parse_dn(dn, strip=True):
        rdns[-1].append((str(kind).lower(), _unescape(str(value))))
        if separator == ",":
            rdns.append([])
    return rdns


def fold_dn(dn: str) -> str:
    """One spelling for every way of writing a DN, for comparing entries: types and values in
    lower case (the attributes that name entries match case-insensitively), escapes redone."""
    try:
        rdns = _rdns(dn)
    except LDAPInvalidDnError:
        return dn.lower()
    return ",".join(
        "+".join(sorted(f"{kind}={escape_rdn(value.lower())}" for kind, value in rdn))
        for rdn in rdns
    )


def fold_member_dn(value: str) -> str:
    """`fold_dn` of a member value, without the UID a uniqueMember value may end in."""
    return fold_dn(_UNIQUE_ID.sub("", value))


def fill_template(template: str, principal: str) -> str:
    """The user DN template with `principal`, escaped as a DN value, in place of {principal}."""
    return template.replace(PLACEHOLDER, escape_rdn(principal))


def principal_in(member: str, rdn_type: str, rdn_value: str, base: str) -> str | None:
    """The principal whose entry `member` names, read back through a user DN template given as
    its first RDN's type and value (as written, {principal} included) and the rest, `base`."""
    try:
        found = _rdns(_UNIQUE_ID.sub("", member))
    except LDAPInvalidDnError:
        return None
    if len(found[0]) != 1 or fold_dn(_join(found[1:])) != fold_dn(base):
        return None
    found_kind, value = found[0][0]
    before, after = (_unescape(part) for part in rdn_value.split(PLACEHOLDER))
    folded = value.lower()
    fits = folded.startswith(before.lower()) and folded.endswith(after.lower())
    if found_kind != rdn_type.lower() or not fits:
        return None
    if len(value) <= len(before) + len(after):
        return None
    return value[len(before) : len(value) - len(after)]


def _join(rdns: list[list[tuple[str, str]]]) -> str:
    return ",".join("+".join(f"{k}={escape_rdn(v)}" for k, v in rdn) for rdn in rdns)
