"""The ssh connector against real OpenSSH: certificates it signs log in to a real sshd, expire,
and stop working the moment a revoke puts their serial in the KRL sshd reads."""

from __future__ import annotations

import stat
import subprocess
import uuid
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import SSHCertificate, SSHCertificateType
from cryptography.utils import CryptographyDeprecationWarning

from jitaccess.adapters.connectors.ssh import SshConnector
from jitaccess.domain.errors import ConnectorError
from jitaccess.domain.policy import ConnectionRef, Target
from jitaccess.ports import Access, ExistingAccess
from support.processes import wait_for
from support.sshd import Sshd, krl_revokes, new_key, require_ssh_keygen, running_sshd


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ssh_target(directory: Path, **options: Any) -> Target:
    return Target(
        name=unique("it-ssh"),
        type="ssh",
        connection=ConnectionRef(file=str(directory / "ca_key")),
        options=tuple(sorted(options.items())),
    )


def make_access(
    public_key: str,
    principals: Sequence[str],
    *,
    starts_at: datetime | None = None,
    lasts: timedelta = timedelta(hours=1),
    principal: str = "alice@example.com",
) -> Access:
    start = starts_at or datetime.now(UTC).replace(microsecond=0)
    return Access(
        grant_id=str(uuid.uuid4()),
        principal=principal,
        role="it-ssh/deploy",
        target="it-ssh",
        grants={"ssh_principals": tuple(principals)},
        starts_at=start,
        ends_at=start + timedelta(seconds=int(lasts.total_seconds())),
        params={"ssh_public_key": public_key},
    )


def save_certificate(key: Path, credentials: dict[str, str]) -> Path:
    # Not `<key>-cert.pub`: ssh would pick that up beside `-i key` without being asked.
    path = key.with_name(f"{key.name}.grant-{credentials['serial']}")
    path.write_text(credentials["certificate"] + "\n")
    return path


def public_line(key: Path) -> str:
    return key.with_name(f"{key.name}.pub").read_text().strip()


def parse_certificate(credentials: dict[str, str]) -> SSHCertificate:
    cert = serialization.load_ssh_public_identity(credentials["certificate"].encode())
    assert isinstance(cert, SSHCertificate)
    return cert


@pytest.fixture
def connector(tmp_path: Path) -> SshConnector:
    require_ssh_keygen()
    return SshConnector.from_target(ssh_target(tmp_path))


@pytest.fixture
def sshd(connector: SshConnector) -> Iterator[Sshd]:
    connector.krl_bytes()  # sshd refuses every key while its RevokedKeys file is missing
    with running_sshd(connector.ca_public_line(), connector.krl_file) as server:
        yield server


@pytest.fixture
def user_key(tmp_path: Path) -> Path:
    require_ssh_keygen()
    return new_key(tmp_path, unique("user"))


# --- logins against a real sshd ----------------------------------------------------------------


def test_certificate_logs_in_during_the_grant_and_the_bare_key_does_not(
    connector: SshConnector, sshd: Sshd, user_key: Path
) -> None:
    principal = unique("deploy")
    sshd.allow("root", [principal])
    credentials = connector.provision(make_access(public_line(user_key), [principal]))

    certificate = save_certificate(user_key, credentials)
    result = sshd.login(user_key, certificate)

    assert result.returncode == 0, f"{result.stderr}\n{sshd.log_text()[-2000:]}"
    assert not sshd.can_login(user_key)  # no authorized_keys: only the certificate opens the door


def test_login_fails_once_the_certificate_expires(
    connector: SshConnector, sshd: Sshd, user_key: Path
) -> None:
    principal = unique("deploy")
    sshd.allow("root", [principal])
    access = make_access(public_line(user_key), [principal], lasts=timedelta(seconds=3))
    certificate = save_certificate(user_key, connector.provision(access))
    assert sshd.can_login(user_key, certificate)

    wait_for(lambda: not sshd.can_login(user_key, certificate), 15, "the certificate to expire")

    assert not krl_revokes(connector.krl_file, certificate)  # refused for its age, not the KRL
    assert "expired" in sshd.log_text().lower()


def test_early_revoke_blocks_login_through_the_krl(
    connector: SshConnector, sshd: Sshd, user_key: Path
) -> None:
    principal = unique("deploy")
    sshd.allow("root", [principal])
    access = make_access(public_line(user_key), [principal], lasts=timedelta(hours=2))
    credentials = connector.provision(access)
    certificate = save_certificate(user_key, credentials)
    assert sshd.can_login(user_key, certificate)

    connector.revoke(access)

    assert krl_revokes(connector.krl_file, certificate)
    assert connector.krl_bytes() == connector.krl_file.read_bytes()
    assert datetime.fromisoformat(credentials["valid_before"]) > datetime.now(UTC)
    assert not sshd.can_login(user_key, certificate)
    assert "revoked" in sshd.log_text().lower()


def test_key_signed_by_another_ca_is_refused(
    connector: SshConnector, sshd: Sshd, user_key: Path, tmp_path: Path
) -> None:
    principal = unique("deploy")
    sshd.allow("root", [principal])
    (tmp_path / "other").mkdir()
    stranger = SshConnector.from_target(ssh_target(tmp_path / "other"))
    credentials = stranger.provision(make_access(public_line(user_key), [principal]))

    assert not sshd.can_login(user_key, save_certificate(user_key, credentials))
    ours = connector.provision(make_access(public_line(user_key), [principal]))
    assert sshd.can_login(user_key, save_certificate(user_key, ours))


def test_principals_missing_from_the_certificate_are_refused(
    connector: SshConnector, sshd: Sshd, user_key: Path
) -> None:
    alpha, bravo = unique("alpha"), unique("bravo")
    sshd.allow("root", [bravo])
    certificate = save_certificate(
        user_key, connector.provision(make_access(public_line(user_key), [alpha]))
    )

    assert not sshd.can_login(user_key, certificate)
    sshd.allow("root", [bravo, alpha])
    assert sshd.can_login(user_key, certificate)


def test_source_address_option_binds_the_certificate_to_a_network(
    tmp_path: Path, user_key: Path
) -> None:
    require_ssh_keygen()
    connector = SshConnector.from_target(ssh_target(tmp_path, source_address="192.0.2.0/24"))
    connector.krl_bytes()
    principal = unique("deploy")
    credentials = connector.provision(make_access(public_line(user_key), [principal]))

    assert parse_certificate(credentials).critical_options == {b"source-address": b"192.0.2.0/24"}
    with running_sshd(connector.ca_public_line(), connector.krl_file) as sshd:
        sshd.allow("root", [principal])
        assert not sshd.can_login(user_key, save_certificate(user_key, credentials))
        assert "source address" in sshd.log_text()


# --- what provision signs ---------------------------------------------------------------------


def test_certificate_carries_the_grant(connector: SshConnector, user_key: Path) -> None:
    access = make_access(public_line(user_key), ["deploy", "www-data"])

    credentials = connector.provision(access)
    cert = parse_certificate(credentials)

    assert cert.type is SSHCertificateType.USER
    assert cert.key_id == f"jitaccess:{access.grant_id}:alice@example.com".encode()
    assert cert.valid_principals == [b"deploy", b"www-data"]
    assert cert.extensions == {b"permit-pty": b""}
    assert cert.critical_options == {}
    assert 0 < cert.serial < 2**64 and str(cert.serial) == credentials["serial"]
    assert cert.valid_after == int(access.starts_at.timestamp()) - 60
    assert cert.valid_before == int(access.ends_at.timestamp())
    assert credentials["principals"] == "deploy,www-data"
    assert datetime.fromisoformat(credentials["valid_before"]) == access.ends_at
    cert.verify_cert_signature()
    signer = cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert connector.ca_public_line().startswith(signer.decode() + " ")


def test_max_validity_caps_the_certificate(tmp_path: Path, user_key: Path) -> None:
    require_ssh_keygen()
    connector = SshConnector.from_target(ssh_target(tmp_path, max_validity="1h", clock_skew=5))
    access = make_access(public_line(user_key), ["deploy"], lasts=timedelta(hours=10))

    cert = parse_certificate(connector.provision(access))

    assert cert.valid_before <= int(datetime.now(UTC).timestamp()) + 3600
    assert cert.valid_before >= int(access.starts_at.timestamp()) + 3600 - 5
    assert cert.valid_after == int(access.starts_at.timestamp()) - 5


def test_provision_is_idempotent(connector: SshConnector, user_key: Path) -> None:
    access = make_access(public_line(user_key), ["deploy"])

    first = connector.provision(access)
    second = connector.provision(access)

    assert first == second
    listed = connector.list_access()
    assert [(e.account, e.grant_id, e.principal) for e in listed] == [
        (f"serial:{first['serial']}", access.grant_id, access.principal)
    ]
    assert connector.account_of(access) == f"serial:{first['serial']}"


def test_a_retry_with_another_key_keeps_the_serial(
    connector: SshConnector, user_key: Path, tmp_path: Path
) -> None:
    access = make_access(public_line(user_key), ["deploy"])
    first = connector.provision(access)
    other_key = new_key(tmp_path, unique("other"))

    second = connector.provision(
        Access(**{**access.__dict__, "params": {"ssh_public_key": public_line(other_key)}})
    )

    assert second["serial"] == first["serial"]
    assert second["certificate"] != first["certificate"]
    connector.revoke(access)
    assert krl_revokes(connector.krl_file, save_certificate(user_key, first))
    assert krl_revokes(connector.krl_file, save_certificate(other_key, second))


# --- revoke, list, remove --------------------------------------------------------------------


def test_revoked_grant_never_gets_a_new_certificate(
    connector: SshConnector, user_key: Path
) -> None:
    revoked = make_access(public_line(user_key), ["deploy"])
    connector.provision(revoked)
    connector.revoke(revoked)
    never_provisioned = make_access(public_line(user_key), ["deploy"])
    connector.revoke(never_provisioned)

    for access in (revoked, never_provisioned):
        with pytest.raises(ConnectorError, match="was revoked"):
            connector.provision(access)
    assert connector.list_access() == []


def test_revoke_is_idempotent_and_a_no_op_without_a_certificate(
    connector: SshConnector, user_key: Path
) -> None:
    access = make_access(public_line(user_key), ["deploy"])
    connector.revoke(make_access(public_line(user_key), ["deploy"]))
    assert not connector.krl_file.exists()  # nothing was issued, so nothing to revoke

    certificate = save_certificate(user_key, connector.provision(access))
    connector.revoke(access)
    connector.revoke(access)

    assert krl_revokes(connector.krl_file, certificate)


def test_list_access_and_remove(connector: SshConnector, tmp_path: Path) -> None:
    keys = [new_key(tmp_path, unique("user")) for _ in range(2)]
    grants = [
        make_access(public_line(k), ["deploy"], principal=f"u{i}") for i, k in enumerate(keys)
    ]
    certificates = [
        save_certificate(k, connector.provision(a)) for k, a in zip(keys, grants, strict=True)
    ]

    listed = {e.grant_id: e for e in connector.list_access(governed=[{"ssh_principals": ["x"]}])}
    assert set(listed) == {a.grant_id for a in grants}
    assert listed[grants[0].grant_id].detail["principals"] == ["deploy"]

    connector.remove(listed[grants[0].grant_id])
    connector.remove(listed[grants[0].grant_id])

    assert krl_revokes(connector.krl_file, certificates[0])
    assert not krl_revokes(connector.krl_file, certificates[1])
    assert [e.grant_id for e in connector.list_access()] == [grants[1].grant_id]
    connector.remove(ExistingAccess(principal=None, account="serial:12345"))  # unknown: no-op
    with pytest.raises(ConnectorError, match="not a certificate serial"):
        connector.remove(ExistingAccess(principal=None, account="jit_bob"))


def test_concurrent_provisions_and_revokes_keep_every_serial(
    connector: SshConnector, tmp_path: Path
) -> None:
    key = public_line(new_key(tmp_path, unique("user")))
    grants = [make_access(key, ["deploy"], principal=f"p{i}") for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        issued = list(pool.map(connector.provision, grants))
        list(pool.map(connector.revoke, grants))

    serials = {int(c["serial"]) for c in issued}
    assert len(serials) == len(grants)
    listing = subprocess.run(
        [require_ssh_keygen(), "-Q", "-l", "-f", str(connector.krl_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert {
        int(line.split()[1]) for line in listing.splitlines() if line.startswith("serial:")
    } >= (serials)
    assert connector.list_access() == []


def test_expired_serials_leave_the_krl(tmp_path: Path, user_key: Path) -> None:
    require_ssh_keygen()
    target = ssh_target(tmp_path)
    clock = [datetime.now(UTC).replace(microsecond=0)]
    connector = SshConnector(target, tmp_path / "ca_key", clock_skew=60, clock=lambda: clock[0])
    early = make_access(public_line(user_key), ["deploy"], starts_at=clock[0])
    early_cert = save_certificate(user_key, connector.provision(early))
    connector.revoke(early)
    assert krl_revokes(connector.krl_file, early_cert)

    clock[0] += timedelta(hours=1, minutes=2)  # past its end and the allowed clock skew
    later = make_access(public_line(user_key), ["deploy"], starts_at=clock[0])
    connector.provision(later)
    connector.revoke(later)

    assert not krl_revokes(connector.krl_file, early_cert)


# --- what cannot be done --------------------------------------------------------------------


def test_extend_is_refused(connector: SshConnector, user_key: Path) -> None:
    access = make_access(public_line(user_key), ["deploy"])
    connector.provision(access)

    with pytest.raises(ConnectorError, match=r"cannot be extended.*request a new grant"):
        connector.extend(access)


@pytest.mark.parametrize(
    "bad_key",
    [
        "",
        "not a key",
        "ssh-ed25519 AAAA!!!not-base64",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIG",  # type says rsa, body is garbage
        "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t",
    ],
)
def test_requester_key_must_be_an_openssh_public_key(connector: SshConnector, bad_key: str) -> None:
    with pytest.raises(ConnectorError, match="not an OpenSSH public key line"):
        connector.provision(make_access(bad_key, ["deploy"]))


def test_certificates_dsa_and_short_rsa_keys_are_refused(
    connector: SshConnector, user_key: Path
) -> None:
    certificate = connector.provision(make_access(public_line(user_key), ["deploy"]))["certificate"]
    with warnings.catch_warnings():  # DSA is deprecated, which is the point
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        dsa_line = _openssh(dsa.generate_private_key(1024).public_key())
    short_rsa = _openssh(rsa.generate_private_key(65537, 1024).public_key())

    for line in (certificate, dsa_line):
        with pytest.raises(ConnectorError, match="not an OpenSSH public key line"):
            connector.provision(make_access(line, ["deploy"]))
    with pytest.raises(ConnectorError, match="2048"):
        connector.provision(make_access(short_rsa, ["deploy"]))
    ecdsa_line = _openssh(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert connector.provision(make_access(ecdsa_line, ["deploy"]))["certificate"]


def _openssh(key: Any) -> str:
    return str(
        key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
    )


# --- the CA, the options and the policy -----------------------------------------------------


def test_ca_key_is_created_private_on_first_use(connector: SshConnector) -> None:
    assert not connector.ca_key_file.exists()

    connector.check()

    assert stat.S_IMODE(connector.ca_key_file.stat().st_mode) == 0o600
    assert connector.ca_key_file.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    derived = subprocess.run(
        [require_ssh_keygen(), "-y", "-f", str(connector.ca_key_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    kind, body, comment = connector.ca_public_line().split(" ")
    assert (kind, body) == ("ssh-ed25519", derived[1])
    assert body.startswith("AAAA")
    assert comment == f"jitaccess-ca:{connector.target.name}"
    assert connector.krl_file.exists()
    again = SshConnector.from_target(connector.target)
    assert again.ca_public_line() == connector.ca_public_line()  # the key is kept, not remade


def test_grant_problems() -> None:
    problems = SshConnector.grant_problems

    assert problems({"ssh_principals": ("deploy", "root", "svc.app", "alice@corp")}) == []
    assert problems({"ssh_principals": ["deploy"]}) == []
    assert problems({}) == [("ssh_principals", "an ssh role needs ssh_principals: [NAME, ...]")]
    assert problems({"ssh_principals": ()}) == [
        ("ssh_principals", "must name at least one principal")
    ]
    assert problems({"ssh_principals": "deploy"}) == [
        ("ssh_principals", "must be a list of principal names")
    ]
    assert [k for k, _ in problems({"ssh_principals": ["a"], "postgres_roles": ["x"]})] == [
        "postgres_roles"
    ]
    for unsafe in ("*", "a b", "-oProxyCommand", "a,b", "", ".hidden", "x" * 65, 7, None):
        found = problems({"ssh_principals": [unsafe]})
        assert [k for k, _ in found] == ["ssh_principals"], unsafe
        assert "not a principal name" in found[0][1]
    assert "twice" in problems({"ssh_principals": ["a", "a"]})[0][1]


def test_grant_is_checked_again_at_provision(connector: SshConnector, user_key: Path) -> None:
    with pytest.raises(ConnectorError, match="not a principal name"):
        connector.provision(make_access(public_line(user_key), ["root", "*"]))


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"max_valdity": "1h"}, "unknown option"),
        ({"max_validity": "forever"}, "not a duration"),
        ({"clock_skew": 99999}, "clock_skew"),
        ({"extensions": ["permit-everything"]}, "unknown extension"),
        ({"extensions": "permit-pty"}, "must be a list"),
        ({"source_address": "example.org"}, "not an address"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConnectorError, match=complaint):
        SshConnector.from_target(ssh_target(tmp_path, **options))


def test_connection_must_name_a_key_file() -> None:
    target = Target(name="it-ssh", type="ssh", connection=ConnectionRef(env="SOME_VAR"))
    with pytest.raises(ConnectorError, match=r"connection: \{file: PATH\}"):
        SshConnector.from_target(target)


def test_check_fails_when_the_krl_directory_is_missing(tmp_path: Path) -> None:
    require_ssh_keygen()
    connector = SshConnector.from_target(
        ssh_target(tmp_path, krl_file=str(tmp_path / "missing" / "revoked.krl"))
    )
    with pytest.raises(ConnectorError, match=r"KRL directory .* missing or not writable"):
        connector.check()


def test_errors_never_show_private_key_material(
    tmp_path: Path, user_key: Path, connector: SshConnector
) -> None:
    private = user_key.read_text()
    secret_lines = [line for line in private.splitlines() if "PRIVATE KEY" not in line]
    messages = []

    # The requester pasted a private key (joined to one line) where the public key belongs.
    for pasted in (private, " ".join(private.splitlines()), "ssh-ed25519 " + secret_lines[0]):
        with pytest.raises(ConnectorError) as refused:
            connector.provision(make_access(pasted, ["deploy"]))
        messages.append(str(refused.value))

    # A CA key file that is damaged, or passphrase-protected.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "ca_key").write_text(private[: len(private) // 2])
    protected = tmp_path / "protected"
    protected.mkdir()
    subprocess.run(
        [
            require_ssh_keygen(),
            "-q",
            "-t",
            "ed25519",
            "-N",
            "passphrase",
            "-f",
            str(protected / "ca_key"),
        ],
        check=True,
        capture_output=True,
    )
    for directory, complaint in ((damaged, "not an OpenSSH or PEM"), (protected, "passphrase")):
        with pytest.raises(ConnectorError, match=complaint) as refused:
            SshConnector.from_target(ssh_target(directory)).check()
        messages.append(str(refused.value))

    protected_lines = (protected / "ca_key").read_text().splitlines()[1:-1]
    for message in messages:
        for line in secret_lines + protected_lines:
            assert line not in message
