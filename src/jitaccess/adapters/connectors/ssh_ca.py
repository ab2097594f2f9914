"""The ssh connector's certificate authority: the CA key (read, or made on first use), the
requester's public key checked, and short-lived OpenSSH user certificates signed with them."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from base64 import b64decode
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
    SSHCertPublicKeyTypes,
)

from jitaccess.domain.errors import ConnectorError
from jitaccess.ports import Access

log = logging.getLogger(__name__)

CaKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
MIN_RSA_BITS = 2048


class CertificateAuthority:
    """The CA private key in `key_file`, read once; created (Ed25519) when the file is missing."""

    def __init__(self, key_file: Path, target_name: str, say: Callable[[str], str]) -> None:
        self.key_file = key_file
        self._target_name = target_name
        self._say = say
        self._key: CaKey | None = None
        self._guard = threading.Lock()

    def key(self) -> CaKey:
        with self._guard:
            if self._key is None:
                self._key = self._load() if self.key_file.exists() else self._create()
            return self._key

    def public_line(self) -> str:
        """The line for sshd's `TrustedUserCAKeys`."""
        return f"{openssh(self.key().public_key())} jitaccess-ca:{self._target_name}"

    def _load(self) -> CaKey:
        path = self.key_file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConnectorError(self._say(f"cannot read CA key {path}: {exc.strerror}")) from None
        if path.stat().st_mode & 0o077:
            log.warning("ssh target %s: CA key %s is readable by others", self._target_name, path)
        # Parser messages are dropped (`from None`): the key's bytes must never reach a message.
        key: object
        try:
            if b"OPENSSH PRIVATE KEY" in data:
                key = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConnectorError(
                self._say(f"CA key {path} is passphrase-protected; jitaccess needs it unencrypted")
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise ConnectorError(
                self._say(f"CA key {path} is not an OpenSSH or PEM private key it can read")
            ) from None
        if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            return key
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
            return key
        raise ConnectorError(
            self._say(f"CA key {path} must be Ed25519, ECDSA or RSA of 2048+ bits")
        )

    def _create(self) -> CaKey:
        path = self.key_file
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        try:
            # Written whole under a temporary name (mode 0600), then linked: never a half-written
            # key, and a key another process made first wins (link refuses to replace it).
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(pem)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(temporary, path)
            finally:
                os.unlink(temporary)
        except FileExistsError:
            return self._load()
        except OSError as exc:
            raise ConnectorError(
                self._say(f"cannot create CA key {path}: {exc.strerror or type(exc).__name__}")
            ) from None
        log.warning("ssh target %s: created a new CA key %s", self._target_name, path)
        return key


def sign(
    ca: CaKey,
    public_key: SSHCertPublicKeyTypes,
    *,
    serial: int,
    key_id: str,
    principals: Sequence[str],
    valid_after: int,
    valid_before: int,
    extensions: Sequence[str],
    source_address: str | None,
) -> SSHCertificate:
    """A user certificate for `public_key`, with the given extensions and source-address."""
    builder = (
        SSHCertificateBuilder()
        .public_key(public_key)
        .serial(serial)
        .type(SSHCertificateType.USER)
        .key_id(key_id.encode())
        .valid_principals([p.encode() for p in principals])
        .valid_after(valid_after)
        .valid_before(valid_before)
    )
    for extension in extensions:
        builder = builder.add_extension(extension.encode(), b"")
    if source_address:
        builder = builder.add_critical_option(b"source-address", source_address.encode())
    return builder.sign(ca)


def requester_key(access: Access, say: Callable[[str], str]) -> SSHCertPublicKeyTypes:
    """The requester's public key. The value is never quoted: a pasted private key must not
    end up in a log line or an error."""
    wrong = say(
        f"grant {access.grant_id}: ssh_public_key is not an OpenSSH public key line"
        f" ({', '.join(KEY_TYPES)} followed by the base64 key)"
    )
    line = access.params.get("ssh_public_key")
    if not isinstance(line, str) or len(line) > 16_384 or "\n" in line.strip():
        raise ConnectorError(wrong)
    fields = line.split()
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise ConnectorError(wrong)  # DSA, certificates, security keys and junk end here
    try:
        b64decode(fields[1], validate=True)
        key = serialization.load_ssh_public_identity(f"{fields[0]} {fields[1]}".encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ConnectorError(wrong) from None
    if isinstance(key, SSHCertificate):
        raise ConnectorError(wrong)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ConnectorError(say(f"grant {access.grant_id}: RSA keys need {MIN_RSA_BITS}+ bits"))
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ConnectorError(wrong)
    return key


def openssh(key: SSHCertPublicKeyTypes) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def key_id(access: Access) -> str:
    # Key ids show up in sshd's log lines and in the certificate comment: no spaces or controls.
    return re.sub(r"[\s\x00-\x1f\x7f]", "_", f"jitaccess:{access.grant_id}:{access.principal}")
