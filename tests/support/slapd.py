"""A real OpenLDAP server for tests: slapd with a throwaway MDB database in a temp dir, on free
loopback ports (plain LDAP, and LDAPS with a self-signed certificate), and the ldap-utils
command-line tools to look at it the way an administrator would."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from support.processes import free_port, wait_for

with warnings.catch_warnings():
    # ldap3 2.9.1, the latest, imports pyasn1 names that pyasn1 0.6 deprecated (tagMap, typeMap).
    warnings.filterwarnings("ignore", r"(tag|type)Map is deprecated", DeprecationWarning)
    import ldap3  # type: ignore[import-untyped]

SLAPD = os.environ.get("JITACCESS_TEST_SLAPD", "/usr/sbin/slapd")
MODULE_DIR = Path(os.environ.get("JITACCESS_TEST_SLAPD_MODULES", "/usr/lib/ldap"))
SCHEMA_DIR = Path(os.environ.get("JITACCESS_TEST_LDAP_SCHEMA", "/etc/ldap/schema"))
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
TOOLS = ("ldapsearch", "ldapmodify", "ldapadd", "ldapdelete", "openssl")

OPENSSL_REQ = [
    "openssl",
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
]
OPENSSL_REQ += ["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
OPENSSL_REQ += ["-addext", "subjectAltName=IP:127.0.0.1"]

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"


def _unavailable(reason: str) -> NoReturn:
    """CI must run the LDAP suite, so there a missing slapd fails; locally it skips."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _ssha(password: str) -> str:
    """The {SSHA} form slapd accepts as rootpw, so the clear password never sits on disk."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # what {SSHA} is defined as
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _require_binaries() -> None:
    if not Path(SLAPD).is_file():
        _unavailable(f"OpenLDAP slapd not found at {SLAPD}")
    if not (MODULE_DIR / "back_mdb.so").exists():
        _unavailable(f"slapd's mdb backend not found in {MODULE_DIR}")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        _unavailable(f"command-line tools not found: {', '.join(missing)}")
    absent = [name for name in SCHEMAS if not (SCHEMA_DIR / f"{name}.schema").is_file()]
    if absent:
        _unavailable(f"LDAP schema files not found in {SCHEMA_DIR}: {', '.join(absent)}")


@dataclass(frozen=True)
class Slapd:
    """A running server; `url` is plain LDAP (StartTLS offered), `ldaps_url` TLS from the start.
    Its certificate, `ca_file`, is self-signed for 127.0.0.1."""

    url: str
    ldaps_url: str
    admin_password: str
    ca_file: Path
    workdir: Path

    @property
    def _password_file(self) -> Path:
        return self.workdir / "admin.pw"

    def _tool(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [
                args[0],
                "-x",
                "-H",
                self.url,
                "-D",
                ADMIN_DN,
                "-y",
                str(self._password_file),
                *args[1:],
            ],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def ldapadd(self, ldif: str) -> None:
        self._tool("ldapadd", stdin=ldif)

    def ldapmodify(self, ldif: str) -> None:
        self._tool("ldapmodify", stdin=ldif)

    def delete(self, dn: str) -> None:
        self._tool("ldapdelete", dn)

    def values(self, dn: str, attribute: str) -> list[str]:
        """`attribute` of the entry `dn` as ldapsearch prints it (base64 values decoded)."""
        output = self._tool(
            "ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-b", dn, "-s", "base", attribute
        )
        found = []
        prefix = attribute.lower() + ":"
        for line in output.splitlines():
            if not line.lower().startswith(prefix):
                continue
            rest = line[len(prefix) :]
            if rest.startswith(":"):
                found.append(base64.b64decode(rest[1:].strip()).decode())
            else:
                found.append(rest.strip())
        return found

    def values_via_ldap3(self, dn: str, attribute: str = "member") -> list[str]:
        """The same, read with ldap3 (a second client, to see the server agrees)."""
        port = int(self.url.rsplit(":", 1)[1])
        server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE)
        with ldap3.Connection(server, ADMIN_DN, self.admin_password, auto_bind=True) as conn:
            conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[attribute])
            raw = conn.response[0]["raw_attributes"]
            return [value.decode() for value in raw.get(attribute, [])]


def _write_certificate(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "server.crt", workdir / "server.key"
    result = subprocess.run(
        [*OPENSSL_REQ, "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl could not make a test certificate: {result.stderr}")
    return cert, key


def _config(workdir: Path, password: str, cert: Path, key: Path) -> Path:
    lines = [f"include {SCHEMA_DIR / name}.schema" for name in SCHEMAS]
    lines += [
        f"modulepath {MODULE_DIR}",
        "moduleload back_mdb",
        f"pidfile {workdir / 'slapd.pid'}",
        f"argsfile {workdir / 'slapd.args'}",
        f"TLSCertificateFile {cert}",
        f"TLSCertificateKeyFile {key}",
        "database mdb",
        "maxsize 16777216",
        f'suffix "{SUFFIX}"',
        f'rootdn "{ADMIN_DN}"',
        f"rootpw {_ssha(password)}",
        f"directory {workdir / 'data'}",
        "index objectClass eq",
    ]
    path = workdir / "slapd.conf"
    path.write_text("\n".join(lines) + "\n")
    (workdir / "data").mkdir()
    return path


SEED = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

dn: {GROUPS}
objectClass: organizationalUnit
ou: groups
"""


def person_ldif(uid: str, dn: str) -> str:
    return f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"


def _answers(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"slapd exited ({process.returncode}): {log.read_text()[-3000:]}")
    host, port = url.removeprefix("ldap://").rstrip("/").split(":")
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, int(port))) == 0


def _start(config: Path, urls: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        # -d 0 keeps slapd in the foreground (no fork), so we own its process.
        process = subprocess.Popen(
            [SLAPD, "-f", str(config), "-h", " ".join(f"{url}/" for url in urls), "-d", "0"],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _answers(urls[0], process, log), 15, "slapd to accept connections")
    except (RuntimeError, AssertionError):
        if process.poll() is None:
            process.kill()
        process.wait(5)
        raise RuntimeError(f"slapd did not start: {log.read_text()[-3000:]}") from None
    return process


@contextmanager
def running_slapd() -> Iterator[Slapd]:
    """Start slapd in the foreground; yield it seeded with ou=people and ou=groups; stop it and
    delete its database afterwards."""
    _require_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="jit_slapd_"))
    process: subprocess.Popen[bytes] | None = None
    try:
        password = secrets.token_urlsafe(16)
        (workdir / "admin.pw").write_text(password)  # no newline: `-y` reads every byte
        cert, key = _write_certificate(workdir)
        config = _config(workdir, password, cert, key)
        log = workdir / "slapd.log"
        for attempt in range(3):  # another process may take a free port before slapd binds it
            url, ldaps_url = f"ldap://127.0.0.1:{free_port()}", f"ldaps://127.0.0.1:{free_port()}"
            try:
                process = _start(config, [url, ldaps_url], log)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        server = Slapd(url, ldaps_url, password, cert, workdir)
        server.ldapadd(SEED)
        yield server
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        with suppress(OSError):
            shutil.rmtree(workdir)
