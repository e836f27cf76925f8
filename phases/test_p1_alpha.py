"""Team Alpha (phase 1): security baseline.

Apply: TLS CA + server/client certificates for flintlock; an nftables firewall derived from
the declared ports; sshd's main config and hardening drop-in (check, validate, swap,
fresh-login proof, automatic rollback of both); network sysctls and automatic security
updates; fail2ban's sshd jail.

Verify from the outside wherever possible: a bounded port scan from the controller, the SSH
server's offered methods and algorithms, a new key login, two rollback drills (a syntax
error and a config that locks the operator out), a ban of a second host after failed
logins. Flintlock TLS: the flintlockd unit Base installed, as systemd loaded it, serves the
issued certificate and never ``--insecure`` (needs the upstream artifacts Base installs).
Alpha does not start flintlockd: it needs containerd, which Bravo (phase 2) brings, and
Bravo proves the TLS handshake on the gRPC port once it runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from apply.api import Context
from apply.facts import SSHSession
from apply.poll import eventually
from checks import probes
from engine import apply_fixture, not_applicable, task
from settings.base import EffectiveProfile
from settings.model import Settings
from steps.alpha import fail2ban, firewall, hardening, sshd, tls
from steps.base import flintlock

pytestmark = pytest.mark.usefixtures("applied")

# A port no team declares, for the "undeclared listener is filtered" proof.
UNDECLARED_PORT = 18737


@apply_fixture
def applied(ctx: Context) -> None:
    for step in (tls.apply, firewall.apply, sshd.apply, hardening.apply, fail2ban.apply):
        step(ctx)


def _key_login(target) -> str:
    """``id -un`` over a brand-new key login from the controller."""
    return probes.ssh_key_login(target.endpoint)


# -- TLS certificates -------------------------------------------------------------------------


@task("TLS certificates")
def test_server_certificate_chains_to_the_ca_and_names_the_host(
    host, settings: Settings, target, certs
) -> None:
    host.run_expect([0], tls.verify_command(certs, "server"))
    cert = tls.parse_cert(host.file(certs.cert("server")).content)
    names = tls.cert_sans(cert)
    assert target.address in names, f"SANs {sorted(names)} lack the address the controller uses"
    assert host.check_output("hostname") in names
    days_left = tls.days_left(cert)
    assert days_left > settings.alpha.tls.renew_before_days, f"server certificate expires in {days_left} days"


@task("TLS certificates")
def test_private_keys_are_root_only(host, settings: Settings, certs) -> None:
    for role in ["ca", "server", *(["client"] if settings.alpha.tls.client_auth else [])]:
        key = host.file(certs.key(role))
        assert key.is_file, certs.key(role)
        assert (key.user, key.group, key.mode) == ("root", "root", 0o600), certs.key(role)


@task("TLS certificates")
def test_client_certificate_is_for_client_auth_only(host, settings: Settings, certs) -> None:
    if not settings.alpha.tls.client_auth:
        not_applicable("alpha.tls.client_auth is off: no client certificate is issued")
    host.run_expect([0], tls.verify_command(certs, "client"))
    client = tls.parse_cert(host.file(certs.cert("client")).content)
    assert tls.extended_key_usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]


# -- Firewall ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controller_address(host) -> str:
    # The address the target sees the controller connect from (not the apply step's view).
    return probes.read_fact(host, SSHSession()).client


@task("Firewall")
def test_port_scan_shows_exactly_the_allowed_ports(
    host, ctx: Context, settings: Settings, target, controller_address
) -> None:
    admins = settings.firewall.admin_sources
    allowed = firewall.allowed_ports(settings, admins, controller_address, peers=ctx.peers)
    before = hardening.public_tcp_ports(probes.read_fact(host, hardening.Listeners()))
    plan = probes.scan_plan(rule.port for rule in settings.ports)
    scan = probes.scan_ports(target.address, plan, timeout=1.0, concurrency=128)
    after = hardening.public_tcp_ports(probes.read_fact(host, hardening.Listeners()))
    # A service may start while the scan runs (a just-restarted host): what listened
    # throughout must answer, what answered must be allowed and listen once the scan is over.
    assert allowed & before & after <= scan.open <= allowed & after, (
        f"open {sorted(scan.open)}; allowed for {controller_address}: {sorted(allowed)}; "
        f"listening before the scan: {sorted(before)}, after: {sorted(after)}"
    )
    # Default deny means drop: closed ports time out rather than answer with a reset.
    assert not scan.refused - allowed, (
        f"answered with a reset (not dropped): {sorted(scan.refused - allowed)}"
    )


@pytest.fixture
def admin_only_port(host, settings: Settings) -> Iterator[int]:
    """A declared admin-only port that listens: a service's, or (before Bravo and Charlie
    start theirs) a throwaway listener on one, so the probe's scan has something to miss."""
    listening = hardening.public_tcp_ports(probes.read_fact(host, hardening.Listeners()))
    # Open to the admins (the controller proves it answers), not to the world.
    admin_only = [
        r.port
        for r in settings.ports
        if r.proto == "tcp" and "admin" in r.sources and "world" not in r.sources
    ]
    assert admin_only, "no admin-only port is declared: nothing to prove closed"
    serving = sorted(set(admin_only) & listening)
    if serving:
        yield serving[0]
        return
    with probes.temporary_listener(host, admin_only[0], unit="hvsuite-admin-only-listener") as port:
        yield port


@task("Firewall")
def test_a_host_that_is_no_admin_reaches_only_the_ports_open_to_it(
    host, probe, ctx: Context, settings: Settings, target, admin_only_port: int
) -> None:
    # The same scan from the probe host, which is outside firewall.admin_sources: admin-only
    # ports (metrics, the registry, flintlock's API) must be as closed to it as to anyone; it
    # reaches the world's ports and those opened to one of its roles (its journal upload).
    address = probes.read_fact(probe.host, firewall.SourceAddress(target.address))
    allowed = firewall.allowed_ports(settings, settings.firewall.admin_sources, address, peers=ctx.peers)
    assert admin_only_port not in allowed, f"{address} is inside firewall.admin_sources: this proves nothing"
    # The controller (an admin) reaches the admin-only port: it answers, so a miss is the firewall.
    assert probes.scan_ports(target.address, [admin_only_port], timeout=2.0).open == {admin_only_port}
    listening = hardening.public_tcp_ports(probes.read_fact(host, hardening.Listeners()))
    plan = probes.scan_plan(rule.port for rule in settings.ports)
    scan = probes.scan_ports(target.address, plan, timeout=1.0, concurrency=128, via=probe.remote)
    assert scan.open == allowed & listening, (
        f"from {address}: open {sorted(scan.open)}; ports open to it and listening: {sorted(allowed & listening)}"
    )
    assert admin_only_port in scan.filtered, f"port {admin_only_port} answered {address} instead of dropping"


@pytest.fixture
def undeclared_listener(host) -> Iterator[int]:
    with probes.temporary_listener(host, UNDECLARED_PORT) as port:
        yield port


@task("Firewall")
def test_an_undeclared_listener_is_dropped(settings: Settings, target, undeclared_listener: int) -> None:
    assert undeclared_listener not in {rule.port for rule in settings.ports}
    scan = probes.scan_ports(target.address, [undeclared_listener], timeout=2.0, concurrency=1)
    assert scan.filtered == {undeclared_listener}, f"port {undeclared_listener} is reachable: {scan}"


@task("Firewall")
def test_ruleset_is_default_deny_and_loaded_at_boot(host) -> None:
    assert "policy drop;" in host.check_output(firewall.list_ruleset_command())
    assert host.service("nftables").is_enabled


# -- SSH hardening ----------------------------------------------------------------------------


@task("SSH hardening")
def test_password_and_keyboard_interactive_are_not_offered(target) -> None:
    assert probes.ssh_auth_methods(target.endpoint) == ["publickey"]
    assert probes.ssh_password_login_refused(target.endpoint) == "not offered"


@task("SSH hardening")
def test_a_new_key_login_works(target) -> None:
    assert _key_login(target) == target.user


@task("SSH hardening")
def test_server_offers_only_modern_algorithms(settings: Settings, target) -> None:
    ssh = settings.alpha.ssh
    offered = probes.ssh_algorithms(target.address, target.port)
    assert set(offered.kex) <= set(ssh.kex), offered.kex
    assert set(offered.ciphers) <= set(ssh.ciphers), offered.ciphers
    assert set(offered.macs) <= set(ssh.macs), offered.macs
    assert set(offered.host_key) <= set(sshd.host_key_algorithms(ssh)), offered.host_key


@task("SSH hardening")
def test_effective_sshd_config_is_hardened(host, settings: Settings) -> None:
    effective = probes.read_fact(host, sshd.EffectiveConfig())
    assert sshd.effective_mismatches(effective, settings.alpha.ssh) == []
    for kind in sshd.disallowed_host_key_types(settings.alpha.ssh):
        assert not host.file(sshd.host_key_path(kind)).exists, f"weak {kind} host key still present"


@task("SSH hardening")
def test_a_syntax_error_is_never_installed(host, remote, settings: Settings, target) -> None:
    before = host.file(sshd.DROPIN).sha256sum
    message = sshd.refused_install(
        remote, settings.alpha.ssh, "ThisIsNotAnSshdKeyword yes\n", guard_seconds=settings.alpha.guard_seconds
    )
    assert "rejected" in message, message
    assert host.file(sshd.DROPIN).sha256sum == before
    assert _key_login(target) == target.user


@task("SSH hardening")
def test_a_lockout_config_is_rolled_back_and_access_kept(host, remote, settings: Settings, target) -> None:
    before = host.file(sshd.DROPIN).sha256sum
    lockout = sshd.render(settings.alpha.ssh, extra=["AllowUsers nobody"])
    message = sshd.refused_install(
        remote, settings.alpha.ssh, lockout, guard_seconds=settings.alpha.guard_seconds
    )
    assert "rolled back" in message, message
    assert host.file(sshd.DROPIN).sha256sum == before
    assert not host.service(sshd.config_guard().timer).is_running
    assert _key_login(target) == target.user


# -- Host baseline ----------------------------------------------------------------------------


@task("Host baseline")
def test_network_sysctls_are_hardened_and_persisted(
    host, settings: Settings, profile: EffectiveProfile
) -> None:
    chosen, _ = hardening.selected_sysctls(settings, profile)
    assert {key: str(host.sysctl(key)) for key in chosen} == chosen
    persisted = host.file(hardening.SYSCTL_FILE).content_string
    assert all(f"{key} = {value}" in persisted for key, value in chosen.items())


@task("Host baseline")
def test_automatic_security_updates_are_scheduled(host) -> None:
    assert host.package("unattended-upgrades").is_installed
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic
    for timer in hardening.APT_TIMERS:
        assert host.service(timer).is_enabled and host.service(timer).is_running, timer


@task("Host baseline")
def test_no_undeclared_service_listens(host, settings: Settings) -> None:
    assert hardening.undeclared_listeners(probes.read_fact(host, hardening.Listeners()), settings) == []


# -- fail2ban ---------------------------------------------------------------------------------


@task("fail2ban")
def test_sshd_jail_is_active(host) -> None:
    assert host.service("fail2ban").is_running and host.service("fail2ban").is_enabled
    assert "Currently banned" in host.check_output(fail2ban.STATUS)
    assert "nftables" in host.check_output(fail2ban.ACTIONS)


@pytest.fixture
def banned_probe(host, probe) -> Iterator[str]:
    # Start clean: an earlier run's ban (bantime outlasts a run) must not decide this one.
    host.run(fail2ban.unban_command(probe.target.address))
    yield probe.target.address
    host.run(fail2ban.unban_command(probe.target.address))


@task("fail2ban")
def test_failed_logins_from_a_second_host_get_it_banned(
    host, probe, settings: Settings, target, banned_probe
) -> None:
    reach = fail2ban.reach_command(target.address, target.port)
    probe.host.run_expect([0], reach)
    attempts = settings.alpha.fail2ban.maxretry + 1
    probe.host.run(fail2ban.failed_logins_command(target.address, target.port, attempts))
    banned = fail2ban.wait_for_ban(lambda: host.check_output(fail2ban.STATUS), banned_probe, timeout=30)
    assert banned, "the probe was not banned within 30 s"
    # fail2ban lists the ban before its nftables action has run (and again on unban).
    dropped = eventually(lambda: probe.host.run(reach).rc != 0, timeout=15)
    assert dropped, "banned host still reaches SSH 15 s after the ban was listed"
    host.run_expect([0, 1], fail2ban.unban_command(banned_probe))
    reaches = eventually(lambda: probe.host.run(reach).rc == 0, timeout=15)
    assert reaches, "unbanned host still cannot reach SSH after 15 s"


# -- Flintlock TLS ----------------------------------------------------------------------------


@task("Flintlock TLS")
@pytest.mark.requires("upstream-artifacts")
def test_flintlockd_unit_serves_the_issued_certificate_never_insecure(
    host, settings: Settings, certs
) -> None:
    # The unit as systemd loaded it (not the file), and that view is not stale.
    assert host.check_output(flintlock.NEED_DAEMON_RELOAD) == "no"
    exec_start = host.check_output(flintlock.EXEC_START)
    assert tls.flintlock_problems(exec_start, settings) == [], exec_start
    assert host.file(certs.cert("server")).is_file and host.file(certs.key("server")).is_file
