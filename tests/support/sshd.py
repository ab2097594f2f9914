"""Real OpenSSH for tests: an sshd on a free loopback port that trusts one user CA and reads one
KRL, and the ssh client to log in to it with a key and its certificate."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

SSHD = os.environ.get("JITACCESS_TEST_SSHD", "/usr/sbin/sshd")
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
LOGIN_USER = "root"


def _unavailable(reason: str) -> NoReturn:
    """CI must run the OpenSSH suite, so there a missing binary fails; locally it skips."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require_ssh_keygen() -> str:
    if not Path(SSH_KEYGEN).is_file():
        _unavailable("ssh-keygen (OpenSSH) not installed")
    return SSH_KEYGEN


def require_openssh() -> None:
    """sshd and ssh installed, and us root (sshd needs it to switch to the login user)."""
    require_ssh_keygen()
    for binary in (SSHD, SSH):
        if not Path(binary).is_file():
            _unavailable(f"OpenSSH binary {binary} not installed")
    if os.geteuid() != 0:
        _unavailable("a test sshd needs root to log users in")


def new_key(directory: Path, name: str) -> Path:
    """A fresh unencrypted Ed25519 key pair; returns the private key path (public: `.pub`)."""
    path = directory / name
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def krl_revokes(krl: Path, certificate: Path) -> bool:
    """Whether `ssh-keygen -Q` (sshd's own check) finds the certificate in the KRL."""
    result = subprocess.run(
        [SSH_KEYGEN, "-Q", "-f", str(krl), str(certificate)],
        capture_output=True,
        text=True,
        check=False,
    )
    if "REVOKED" in result.stdout:
        return True
    if result.returncode != 0:
        raise AssertionError(f"ssh-keygen -Q failed: {result.stdout}{result.stderr}")
    return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Sshd:
    port: int
    workdir: Path
    log: Path

    def allow(self, user: str, principals: Iterable[str]) -> None:
        """Write `user`'s AuthorizedPrincipalsFile: the certificate principals that may log in."""
        (self.workdir / "principals" / user).write_text("".join(f"{p}\n" for p in principals))

    def login(
        self, key: Path, certificate: Path | None = None, user: str = LOGIN_USER
    ) -> subprocess.CompletedProcess[str]:
        """Run `true` over ssh with exactly this key (and certificate); never prompts."""
        options = [
            "-F",
            "/dev/null",
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(self.port),
        ]
        if certificate is not None:
            options += ["-o", f"CertificateFile={certificate}"]
        return subprocess.run(
            [SSH, *options, f"{user}@127.0.0.1", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def can_login(self, key: Path, certificate: Path | None = None) -> bool:
        return self.login(key, certificate).returncode == 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _config(workdir: Path, port: int, ca_public: Path, krl: Path) -> str:
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {workdir / 'host_ed25519'}",
            f"PidFile {workdir / 'sshd.pid'}",
            f"TrustedUserCAKeys {ca_public}",
            f"RevokedKeys {krl}",
            f"AuthorizedPrincipalsFile {workdir / 'principals' / '%u'}",
            "AuthorizedKeysFile none",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "MaxStartups 100",
            "LogLevel VERBOSE",
            "",
        ]
    )


@contextmanager
def running_sshd(ca_public_line: str, krl: Path) -> Iterator[Sshd]:
    """An sshd trusting `ca_public_line` and reading the KRL at `krl` on every login; no user
    may log in until `allow` names principals for them."""
    require_openssh()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation's chroot
    workdir = Path(tempfile.mkdtemp(prefix="jit_sshd_"))
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "host_ed25519")],
            check=True,
            capture_output=True,
        )
        ca_public = workdir / "trusted_user_ca.pub"
        ca_public.write_text(ca_public_line + "\n")
        (workdir / "principals").mkdir()
        log = workdir / "sshd.log"
        for attempt in range(3):  # another process may take the free port before sshd binds it
            port = _free_port()
            config = workdir / "sshd_config"
            config.write_text(_config(workdir, port, ca_public, krl))
            with log.open("ab") as handle:
                process = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(config)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if _wait_listening(process, log, port):
                break
            _stop(process)
            process = None
            if attempt == 2:
                raise AssertionError(f"sshd did not start: {log.read_text(errors='replace')}")
        yield Sshd(port, workdir, log)
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_listening(process: subprocess.Popen[bytes], log: Path, port: int) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if f"Server listening on 127.0.0.1 port {port}" in log.read_text(errors="replace"):
            return True
        time.sleep(0.02)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
