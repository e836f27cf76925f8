"""Team Alpha (phase 1): security baseline.

Apply: TLS CA + server/client certificates for flintlock; an nftables firewall derived from
the declared ports; an sshd hardening drop-in (check, validate, swap, fresh-login proof,
automatic rollback); network sysctls and automatic security updates; fail2ban's sshd jail;
flintlockd served with TLS (needs the upstream artifacts Base installs).

Verify from the outside wherever possible: a bounded port scan from the controller, the SSH
server's offered methods and algorithms, a new key login, two rollback drills (a syntax
error and a config that locks the operator out), a ban of a second host after failed
logins, a TLS handshake on flintlock's gRPC port.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from engine import task
from settings.model import Settings
from steps import fail2ban, firewall, flintlock, hardening, probes, sshd, tls
from steps.runner import ApplyError

pytestmark = pytest.mark.usefixtures("applied")

# A port no team declares, for the "undeclared listener is filtered" proof.
UNDECLARED_PORT = 18737


@pytest.fixture(scope="module")
def applied(remote, settings: Settings, target) -> None:
    tls.ensure(remote, settings.alpha.tls, extra_sans=[target.address])
    firewall.apply(remote, settings, scratch=target.is_scratch)
    sshd.apply(remote, settings.alpha.ssh, guard_seconds=settings.alpha.guard_seconds)
    hardening.apply(remote, settings)
    fail2ban.apply(remote, settings.alpha.fail2ban, ssh_port=settings.ssh.port)


@pytest.fixture(scope="module")
def controller_address(host) -> str:
    # The address the target sees the controller connect from (not the apply step's view).
    return host.check_output('echo "$SSH_CONNECTION"').split()[0]


def _cert(host, path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(host.file(path).content)


# -- TLS certificates -------------------------------------------------------------------------


@task("TLS certificates")
def test_server_certificate_chains_to_the_ca_and_names_the_host(host, settings: Settings, target) -> None:
    paths = tls.Paths(settings.alpha.tls.cert_dir)
    host.run_expect([0], f"openssl verify -CAfile {paths.cert('ca')} {paths.cert('server')}")
    cert = _cert(host, paths.cert("server"))
    names = tls.cert_sans(cert)
    assert target.address in names, f"SANs {sorted(names)} lack the address the controller uses"
    assert host.check_output("hostname") in names
    days_left = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    assert days_left > settings.alpha.tls.renew_before_days, f"server certificate expires in {days_left} days"


@task("TLS certificates")
def test_private_keys_are_root_only(host, settings: Settings) -> None:
    paths = tls.Paths(settings.alpha.tls.cert_dir)
    roles = ["ca", "server", *(["client"] if settings.alpha.tls.client_auth else [])]
    for role in roles:
        key = host.file(paths.key(role))
        assert key.is_file, paths.key(role)
        assert (key.user, key.group, key.mode) == ("root", "root", 0o600), paths.key(role)


@task("TLS certificates")
def test_client_certificate_is_for_client_auth_only(host, settings: Settings) -> None:
    if not settings.alpha.tls.client_auth:
        pytest.skip("alpha.tls.client_auth is off: no client certificate is issued")
    paths = tls.Paths(settings.alpha.tls.cert_dir)
    host.run_expect([0], f"openssl verify -CAfile {paths.cert('ca')} {paths.cert('client')}")
    usages = _cert(host, paths.cert("client")).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


# -- Firewall ---------------------------------------------------------------------------------


@task("Firewall")
def test_port_scan_shows_exactly_the_allowed_ports(
    host, settings: Settings, target, controller_address
) -> None:
    admins = firewall.admin_sources(settings, scratch=target.is_scratch)
    allowed = firewall.allowed_ports(settings, admins, controller_address)
    listening = {
        listener.port
        for listener in hardening.parse_ss(host.check_output("ss -tulpnH"))
        if listener.proto == "tcp" and not listener.loopback_only
    }
    declared = [rule.port for rule in settings.ports]
    scan = probes.scan_ports(target.address, probes.scan_plan(declared), timeout=1.0, concurrency=128)
    assert scan.open == allowed & listening, (
        f"open {sorted(scan.open)}; allowed for {controller_address}: {sorted(allowed)}; "
        f"listening: {sorted(listening)}"
    )
    # Default deny means drop: closed ports time out rather than answer with a reset.
    assert not scan.refused - allowed, (
        f"answered with a reset (not dropped): {sorted(scan.refused - allowed)}"
    )


@pytest.fixture
def undeclared_listener(host) -> Iterator[int]:
    unit = "hvsuite-undeclared-listener"
    host.run_expect(
        [0],
        f"systemd-run --quiet --collect --unit={unit} "
        f"python3 -m http.server --bind 0.0.0.0 {UNDECLARED_PORT}",
    )
    try:
        for _ in range(50):
            if f":{UNDECLARED_PORT} " in host.check_output("ss -tlnH"):
                break
            time.sleep(0.1)
        yield UNDECLARED_PORT
    finally:
        host.run(f"systemctl stop {unit}")


@task("Firewall")
def test_an_undeclared_listener_is_dropped(settings: Settings, target, undeclared_listener: int) -> None:
    assert undeclared_listener not in {rule.port for rule in settings.ports}
    scan = probes.scan_ports(target.address, [undeclared_listener], timeout=2.0, concurrency=1)
    assert scan.filtered == {undeclared_listener}, f"port {undeclared_listener} is reachable: {scan}"


@task("Firewall")
def test_ruleset_is_default_deny_and_loaded_at_boot(host) -> None:
    ruleset = host.check_output(firewall.list_ruleset_command())
    assert "policy drop;" in ruleset
    assert host.service("nftables").is_enabled


# -- SSH hardening ----------------------------------------------------------------------------


@task("SSH hardening")
def test_password_and_keyboard_interactive_are_not_offered(settings: Settings, target) -> None:
    assert probes.ssh_auth_methods(target.address, target.port, target.user) == ["publickey"]
    assert probes.ssh_password_login_refused(target.address, target.port, target.user) == "not offered"


@task("SSH hardening")
def test_a_new_key_login_works(target) -> None:
    assert probes.ssh_key_login(target.address, target.port, target.user, str(target.key_file)) == target.user


@task("SSH hardening")
def test_server_offers_only_modern_algorithms(settings: Settings, target) -> None:
    ssh = settings.alpha.ssh
    offered = probes.ssh_algorithms(target.address, target.port)
    allowed_host_keys = {alg for kind in ssh.host_key_types for alg in sshd.HOST_KEY_ALGORITHMS[kind]}
    assert set(offered.kex) <= set(ssh.kex), offered.kex
    assert set(offered.ciphers) <= set(ssh.ciphers), offered.ciphers
    assert set(offered.macs) <= set(ssh.macs), offered.macs
    assert set(offered.host_key) <= allowed_host_keys, offered.host_key


@task("SSH hardening")
def test_effective_sshd_config_is_hardened(host, settings: Settings) -> None:
    effective = sshd.parse_effective(
        host.check_output("sshd -T -C user=root,host=check.invalid,addr=192.0.2.1")
    )
    assert sshd.effective_mismatches(effective, settings.alpha.ssh) == []
    for kind in set(sshd.ALL_HOST_KEY_TYPES) - set(settings.alpha.ssh.host_key_types):
        assert not host.file(sshd.host_key_path(kind)).exists, f"weak {kind} host key still present"


def _drill(remote, settings: Settings, text: str) -> str:
    """Push a bad drop-in through the real install path on its own connection (the drill's
    change is undone by the rollback and is not one of the team's convergence changes)."""
    drill = remote.fresh()
    try:
        with pytest.raises(ApplyError) as failure:
            sshd.install_config(drill, settings.alpha.ssh, text, guard_seconds=settings.alpha.guard_seconds)
    finally:
        drill.close()
    return str(failure.value)


@task("SSH hardening")
def test_a_syntax_error_is_never_installed(host, remote, settings: Settings, target) -> None:
    before = host.file(sshd.DROPIN).sha256sum
    message = _drill(remote, settings, "ThisIsNotAnSshdKeyword yes\n")
    assert "rejected" in message, message
    assert host.file(sshd.DROPIN).sha256sum == before
    assert probes.ssh_key_login(target.address, target.port, target.user, str(target.key_file)) == target.user


@task("SSH hardening")
def test_a_lockout_config_is_rolled_back_and_access_kept(host, remote, settings: Settings, target) -> None:
    before = host.file(sshd.DROPIN).sha256sum
    lockout = sshd.render(settings.alpha.ssh, extra=["AllowUsers nobody"])
    message = _drill(remote, settings, lockout)
    assert "rolled back" in message, message
    assert host.file(sshd.DROPIN).sha256sum == before
    assert not host.service("hvsuite-guard-sshd.timer").is_running
    assert probes.ssh_key_login(target.address, target.port, target.user, str(target.key_file)) == target.user


# -- Host baseline ----------------------------------------------------------------------------


@task("Host baseline")
def test_network_sysctls_are_hardened_and_persisted(host, settings: Settings) -> None:
    chosen, _ = hardening.sysctl_selection(
        settings.alpha.sysctls, namespaced_only=settings.profile.namespaced_sysctls_only
    )
    live = {key: str(host.sysctl(key)) for key in chosen}
    assert live == chosen
    persisted = host.file(hardening.SYSCTL_FILE).content_string
    assert all(f"{key} = {value}" in persisted for key, value in chosen.items())


@task("Host baseline")
def test_automatic_security_updates_are_scheduled(host) -> None:
    assert host.package("unattended-upgrades").is_installed
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.service(timer).is_enabled and host.service(timer).is_running, timer


@task("Host baseline")
def test_no_undeclared_service_listens(host, settings: Settings) -> None:
    listeners = hardening.parse_ss(host.check_output("ss -tulpnH"))
    assert hardening.undeclared_listeners(listeners, settings) == []


# -- fail2ban ---------------------------------------------------------------------------------


@task("fail2ban")
def test_sshd_jail_is_active(host) -> None:
    assert host.service("fail2ban").is_running and host.service("fail2ban").is_enabled
    assert "Currently banned" in host.check_output("fail2ban-client status sshd")
    assert "nftables" in host.check_output("fail2ban-client get sshd actions")


@pytest.fixture
def banned_probe(host, probe, target) -> Iterator[str]:
    if probe.target is None:
        pytest.fail("the fail2ban check needs a second host: set target.probe in the config")
    address = probe.target.address
    # Start clean: an earlier run's ban (bantime outlasts a run) must not decide this one.
    host.run(f"fail2ban-client set sshd unbanip {address}")
    yield address
    host.run(f"fail2ban-client set sshd unbanip {address}")


@task("fail2ban")
def test_failed_logins_from_a_second_host_get_it_banned(
    host, probe, settings: Settings, target, banned_probe
) -> None:
    reach = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{target.address}/{target.port}'"
    probe.host.run_expect([0], reach)
    attempts = settings.alpha.fail2ban.maxretry + 1
    probe.host.run(
        # Each attempt bounded: once banned, packets of a half-open session vanish.
        f"for i in $(seq {attempts}); do timeout 8 ssh -n -o BatchMode=yes -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o PubkeyAuthentication=no "
        f"-p {target.port} hvs-no-such-user@{target.address} true; done"
    )
    deadline = time.monotonic() + 30
    while banned_probe not in fail2ban.parse_banned(host.check_output("fail2ban-client status sshd")):
        assert time.monotonic() < deadline, "the probe was not banned within 30 s"
        time.sleep(1)
    assert probe.host.run(reach).rc != 0, "banned host still reaches SSH"
    host.run_expect([0, 1], f"fail2ban-client set sshd unbanip {banned_probe}")
    probe.host.run_expect([0], reach)


# -- Flintlock TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flintlock_served(remote, settings: Settings) -> None:
    flintlock.serve_with_tls(remote, settings)


@task("Flintlock TLS")
@pytest.mark.requires("upstream-artifacts")
def test_flintlockd_runs_with_tls_never_insecure(host, flintlock_served) -> None:
    assert host.service("flintlockd").is_running
    exec_start = host.check_output("systemctl show -p ExecStart flintlockd")
    assert "--tls-cert" in exec_start and "--insecure" not in exec_start


@task("Flintlock TLS")
@pytest.mark.requires("upstream-artifacts")
def test_grpc_port_presents_the_issued_certificate(
    host, settings: Settings, target, flintlock_served
) -> None:
    paths = tls.Paths(settings.alpha.tls.cert_dir)
    ca_pem = host.file(paths.cert("ca")).content_string
    issued = _cert(host, paths.cert("server")).public_bytes(Encoding.DER)
    handshake = probes.tls_handshake(
        target.address, settings.base.grpc_port, server_name=target.address, ca_pem=ca_pem
    )
    assert handshake.sha256 == hashlib.sha256(issued).hexdigest()
    assert handshake.alpn == "h2", "the gRPC port did not negotiate HTTP/2"
