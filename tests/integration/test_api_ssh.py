"""SSH access end to end through the API, on both stores: a request carries the public key,
the grant's credentials hold a certificate from the built-in CA, sshd (trusting the CA line
served at /api/v1/ssh/ca and reading the KRL jitaccess writes) lets it in during the grant,
and an early revoke shuts it out through the KRL served at /api/v1/ssh/krl."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from jitaccess.bootstrap import apply_policy_files
from support.api import Api, assert_problem
from support.sshd import new_key, require_openssh, running_sshd


def policy(tmp_path: Path) -> str:
    return f"""\
admins: [group:security]
users:
  alice: {{groups: [engineers]}}
  sec: {{groups: [security]}}
targets:
  web:
    type: ssh
    connection: {{file: {tmp_path / "ca" / "ca_key"}}}
    options: {{krl_file: {tmp_path / "ca" / "revoked.krl"}, max_validity: 2h}}
roles:
  web/deploy:
    target: web
    grants: {{ssh_principals: [deploy]}}
    duration: {{default: 30m, max: 1h}}
eligibility:
  - principals: [group:engineers]
    roles: [web/deploy]
"""


def test_certificate_logs_in_during_the_grant_and_not_after_an_early_revoke(
    api: Api, tmp_path: Path
) -> None:
    require_openssh()
    # Certificates are checked by sshd against the real clock: run the grant in real time.
    api.clock.set(datetime.now(UTC))
    (tmp_path / "ca").mkdir()
    (tmp_path / "p.yaml").write_text(policy(tmp_path))
    apply_policy_files(api.container, [str(tmp_path / "p.yaml")])
    key = new_key(tmp_path, "alice")
    public = key.with_suffix(".pub").read_text().strip()

    missing = api.post("alice", "/api/v1/requests", {"roles": ["web/deploy"]})
    assert assert_problem(missing, 422, "invalid-input")["field"] == "ssh_public_key"
    junk = api.post(
        "alice", "/api/v1/requests", {"roles": ["web/deploy"], "ssh_public_key": "ssh-dss AAAA"}
    )
    assert assert_problem(junk, 422, "invalid-input")["field"] == "ssh_public_key"
    created = api.ask("alice", {"roles": ["web/deploy"], "ssh_public_key": public})
    grant_id = created["grants"][0]
    report = api.work()
    assert api.grant("alice", grant_id)["state"] == "active", report.errors
    credentials = api.get("alice", f"/api/v1/grants/{grant_id}/credentials").json()
    certificate = tmp_path / "issued-certificate"  # not <key>-cert.pub: ssh loads that alone
    certificate.write_text(credentials["certificate"] + "\n")

    ca_line = api.client.get("/api/v1/ssh/ca").text.strip()
    assert ca_line.startswith("ssh-ed25519 ") and ca_line.endswith("jitaccess-ca:web")
    krl = tmp_path / "ca" / "revoked.krl"
    with running_sshd(ca_line, krl) as sshd:
        sshd.allow("root", ["deploy"])
        assert sshd.can_login(key, certificate)
        assert not sshd.can_login(key)  # the bare key is not enough

        extend = api.post("alice", f"/api/v1/grants/{grant_id}/extend", {"duration": "10m"})
        assert assert_problem(extend, 409, "conflict")["rule"] == "cannot-extend"
        revoked = api.post("sec", f"/api/v1/grants/{grant_id}/revoke", {"reason": "leaver"})
        assert revoked.status_code == 200, revoked.text
        api.work()
        assert api.grant("alice", grant_id)["state"] == "revoked"
        assert not sshd.can_login(key, certificate)
    served = api.client.get("/api/v1/ssh/krl")
    assert served.status_code == 200
    assert served.content == krl.read_bytes()
